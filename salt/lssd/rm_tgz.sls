{#- Remove the archive and torrent of tag lssd:tag from the targeted minions, leaving the
    installed tree (ansible-lssd's rm_tgz.yml). Refused while the tag is still seeded or a
    peer lingers on it: run lssd.stop / lssd.peer_stop first, or wait lssd:linger seconds.

        salt 'web*' state.apply lssd.rm_tgz
-#}
{%- from "lssd/map.jinja" import lssd with context %}

lssd-rm-tgz:
  module.run:
    - lssd.rm_tgz:
      - tag: {{ lssd.tag|json }}
