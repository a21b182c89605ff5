{#- ansible-lssd's site.yml: prepare every minion of the three roles (lssd.setup), then deploy
    (lssd.orch.deploy, which checks the tag and the targets before anything runs).

        salt-run state.orchestrate lssd.orch.site
-#}
{%- from "lssd/orch/run.jinja" import lssd, require_on_master, job_timeout with context %}
{{- require_on_master(["targets:tracker", "targets:seeder", "targets:peer"], "lssd.orch.site") }}
{%- set targets = lssd.targets %}
{%- set everyone = "( " ~ targets.tracker ~ " ) or ( " ~ targets.seeder ~ " ) or ( " ~ targets.peer ~ " )" %}

include:
  - lssd.orch.deploy

lssd-setup:
  salt.state:
    - tgt: {{ everyone|json }}
    - tgt_type: compound
    - sls: lssd.setup
    - expect_minions: true
    # pip and the package manager may download; a busy master waits for them.
    - timeout: {{ job_timeout }}
    # The deploy starts only once every minion is ready: each of its steps requires lssd-run.
    - require_in:
      - test: lssd-run
