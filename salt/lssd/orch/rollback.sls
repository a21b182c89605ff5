{#- Switch current back, fleet-wide, with no download:

        salt-run state.orchestrate lssd.orch.rollback
        salt-run state.orchestrate lssd.orch.rollback pillar='{"lssd": {"rollback_to": "Deploy1"}}'

    Every peer of lssd:targets:peer (read on the master, like lssd:batch and lssd:job_timeout)
    applies lssd.rollback: its lssd:current symlink goes back to the tag installed before
    the one it points to now, or to lssd:rollback_to, which is handed to every peer so the
    whole fleet lands on the same tag. A peer that does not hold that tag fails and is named;
    nothing is downloaded, no tracker or seeder is needed.
-#}
{%- from "lssd/orch/run.jinja" import lssd, require_on_master, minions, run_pillar, batch, job_timeout with context %}
{{- require_on_master(["targets:peer"], "lssd.orch.rollback") }}
{%- do minions(lssd.targets.peer, "lssd:targets:peer", "lssd.orch.rollback") %}

lssd-rollback:
  salt.state:
    - tgt: {{ lssd.targets.peer|json }}
    - tgt_type: compound
    - sls: lssd.rollback
    - pillar: {{ run_pillar|json }}
    - expect_minions: true
    - timeout: {{ job_timeout }}
{%- if batch is not none %}
    - batch: {{ batch|json }}
{%- endif %}
