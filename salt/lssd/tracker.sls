{#- The BitTorrent tracker, on the minions that pillar lssd:targets:tracker names.

        salt tracker01 state.apply lssd.tracker
-#}
{%- from "lssd/map.jinja" import lssd with context %}

lssd-tracker:
  lssd.tracker_running:
    - port: {{ lssd.tracker.port|json }}
    - bind: {{ lssd.tracker.bind|json }}
