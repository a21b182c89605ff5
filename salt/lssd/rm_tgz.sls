{#- Remove the archive and torrent of tag lssd:tag from the targeted minions, leaving the
    installed tree (ansible-lssd's rm_tgz.yml). Refused while the tag is still seeded or a
    peer lingers on it: run lssd.stop / lssd.peer_stop first, or wait lssd:linger seconds.
    Reports a change only where a file was removed.

        salt 'web*' state.apply lssd.rm_tgz
-#}
{%- from "lssd/map.jinja" import lssd, require with context %}
{{- require(["tag"], "lssd.rm_tgz") }}

lssd-rm-tgz:
  lssd.archive_absent:
    - name: {{ lssd.tag|json }}
