{#- What lssd needs on every minion: the libtorrent Python bindings in the Python that runs
    Salt, and the archive tools (zstd, pigz) the seeder packs and the peers unpack with.

        salt -C 'tracker01 or build01 or web*' state.apply lssd.setup

    pip-installed Salt: libtorrent goes into the interpreter that runs the minion (grain
    pythonexecutable). Onedir Salt (the official packages, below /opt/saltstack/salt): no
    bin_env, so Salt's pip module uses salt-pip, which installs into the onedir's extras
    directory, kept across Salt upgrades.
-#}
{%- set python = grains.get("pythonexecutable", "") %}
{%- set onedir = python.startswith("/opt/saltstack/salt/") %}

lssd-libtorrent:
  pip.installed:
    - name: libtorrent >= 2.0
{%- if not onedir %}
    - bin_env: {{ python|json }}
{%- endif %}
    # Load the lssd execution module in this same run, now that libtorrent is there.
    - reload_modules: true

lssd-archive-tools:
  pkg.installed:
    - pkgs:
      - pigz
      - zstd
