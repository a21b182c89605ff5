{#- Pack lssd:seeder_files_path as tag lssd:tag and make its torrent, without seeding it
    (ansible-lssd's create_torrent.yml). A torrent this minion already made for the tag is
    kept unless lssd:rebuild is set. lssd.seeder does this and seeds.

        salt build01 state.apply lssd.create_torrent
-#}
{%- from "lssd/map.jinja" import lssd, require with context %}
{{- require(["tag", "seeder_files_path"], "lssd.create_torrent") }}

{#- The torrent is looked up while rendering; without the execution module that lookup
    would break the render with a bare "not available", so say what is missing instead. #}
{%- if "lssd.torrent_info" not in salt %}
lssd-torrent:
  test.fail_without_changes:
    - name: {{ ("the lssd execution module is not loaded on " ~ grains["id"] ~ " (salt " ~ grains["id"]
               ~ " sys.list_modules shows it; see 'lssd __virtual__ returned False' in the README)")|json }}
{%- else %}
{%-   set made = salt["lssd.torrent_info"](lssd.tag) %}
{%-   if made and not lssd.rebuild %}
lssd-torrent:
  test.succeed_without_changes:
    - name: {{ ("The torrent of " ~ lssd.tag ~ " exists (infohash " ~ made.infohash ~ ")")|json }}
{%-   else %}
lssd-torrent:
  module.run:
    - lssd.create_torrent:
      - tag: {{ lssd.tag|json }}
      - files_path: {{ lssd.seeder_files_path|json }}
      - compression: {{ lssd.compression|json }}
      - exclude: {{ lssd.exclude|json }}
      - path_is_file: {{ lssd.path_is_file|json }}
{%-   endif %}
{%- endif %}
