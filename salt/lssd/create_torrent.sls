{#- Pack lssd:seeder_files_path as tag lssd:tag and make its torrent, without seeding it
    (ansible-lssd's create_torrent.yml). A torrent this minion already made for the tag is
    kept unless lssd:rebuild is set. lssd.seeder does this and seeds.

        salt build01 state.apply lssd.create_torrent
-#}
{%- from "lssd/map.jinja" import lssd, require with context %}
{#- A missing seeder_files_path fails the lssd.torrent_made state, naming the key (see lssd.peer). #}
{{- require(["tag"], "lssd.create_torrent") }}

lssd-torrent:
  lssd.torrent_made:
    - name: {{ lssd.tag|json }}
    - files_path: {{ lssd.seeder_files_path|json }}
    - compression: {{ lssd.compression|json }}
    - exclude: {{ lssd.exclude|json }}
    - path_is_file: {{ lssd.path_is_file|json }}
    - rebuild: {{ lssd.rebuild|json }}
