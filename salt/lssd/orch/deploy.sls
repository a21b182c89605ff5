{#- One deploy, end to end (ansible-lssd's start_tracker, create_torrent, start_seeder, deploy
    and stop_seeder_and_tracker in one run):

        salt-run state.orchestrate lssd.orch.deploy
        salt-run state.orchestrate lssd.orch.deploy pillar='{"lssd": {"tag": "Deploy2"}}'

    1. the tracker starts on lssd:targets:tracker;
    2. the seeder (lssd:targets:seeder) packs the build, makes the torrent, seeds it and
       publishes the torrent to the mine;
    3. the tracker registers that torrent (it serves nothing else);
    4. every peer (lssd:targets:peer, compound) downloads and installs the tag, all at once:
       a failing peer fails the run and is named, the others still complete;
    5. seeding and the tracker stop, whatever happened before (order: last, no requisites).

    Targets and the tag come from pillar lssd as the master sees it: its own pillar (the
    pillar top must match the master's id too, by default <hostname>_master) and pillar= of
    this run.
    That same pillar lssd, with the tag, is handed to every role, so one run uses one tag and
    one tracker everywhere; a key the master's pillar does not set (a per-group
    destination_path, say) keeps each minion's own value, and then the default.
-#}
{%- from "lssd/map.jinja" import lssd with context %}
{%- set targets = lssd.targets %}
{%- set role_pillar = {"lssd": dict(salt["pillar.get"]("lssd", {}), tag=lssd.tag)} %}
{%- set tracker_and_seeder = "( " ~ targets.tracker ~ " ) or ( " ~ targets.seeder ~ " )" %}

lssd-tracker:
  salt.state:
    - tgt: {{ targets.tracker|json }}
    - tgt_type: compound
    - sls: lssd.tracker
    - pillar: {{ role_pillar|json }}
    - expect_minions: true

lssd-seeder:
  salt.state:
    - tgt: {{ targets.seeder|json }}
    - tgt_type: compound
    - sls: lssd.seeder
    - pillar: {{ role_pillar|json }}
    - expect_minions: true
    - require:
      - salt: lssd-tracker

# The tracker reads the torrent from the mine entry the seeder just published.
lssd-tracker-allow:
  salt.function:
    - name: lssd.tracker_allow
    - tgt: {{ targets.tracker|json }}
    - tgt_type: compound
    - arg:
      - {{ lssd.tag|json }}
    - expect_minions: true
    - require:
      - salt: lssd-seeder

lssd-peers:
  salt.state:
    - tgt: {{ targets.peer|json }}
    - tgt_type: compound
    - sls: lssd.peer
    - pillar: {{ role_pillar|json }}
    - expect_minions: true
    - require:
      - salt: lssd-tracker-allow

# Cleanup runs last and unconditionally: a failed peer (or seeder) must not leave the seeder
# and the tracker running. Finished peers keep seeding lssd:linger seconds, then stop.
lssd-stop:
  salt.state:
    - tgt: {{ tracker_and_seeder|json }}
    - tgt_type: compound
    - sls: lssd.stop
    - pillar: {{ role_pillar|json }}
    - order: last
