{#- Pack lssd:seeder_files_path as tag lssd:tag, make its torrent and seed it (ansible-lssd's
    create_torrent.yml and start_seeder.yml). The torrent names the tracker at
    lssd:tracker:host, else the address the tracker minion published to the mine; it is
    published to the mine for the tracker (lssd.tracker_allow) and the peers.

        salt build01 state.apply lssd.seeder
-#}
{%- from "lssd/map.jinja" import lssd, require with context %}
{#- A missing seeder_files_path fails the lssd.seeding state, naming the key (see lssd.peer). #}
{{- require(["tag"], "lssd.seeder") }}

lssd-seeding:
  lssd.seeding:
    - name: {{ lssd.tag|json }}
    - files_path: {{ lssd.seeder_files_path|json }}
    - compression: {{ lssd.compression|json }}
    - exclude: {{ lssd.exclude|json }}
    - path_is_file: {{ lssd.path_is_file|json }}
    - rebuild: {{ lssd.rebuild|json }}
