{#- ansible-lssd's site.yml: prepare every minion of the three roles (lssd.setup), then deploy
    (lssd.orch.deploy).

        salt-run state.orchestrate lssd.orch.site
-#}
{%- from "lssd/map.jinja" import lssd with context %}
{%- set targets = lssd.targets %}
{%- set everyone = "( " ~ targets.tracker ~ " ) or ( " ~ targets.seeder ~ " ) or ( " ~ targets.peer ~ " )" %}

include:
  - lssd.orch.deploy

lssd-setup:
  salt.state:
    - tgt: {{ everyone|json }}
    - tgt_type: compound
    - sls: lssd.setup
    - pillar: {{ {"lssd": lssd}|json }}
    - expect_minions: true
    # The deploy starts only once every minion is ready.
    - require_in:
      - salt: lssd-tracker
