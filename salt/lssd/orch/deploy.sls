{#- One deploy, end to end (ansible-lssd's start_tracker, create_torrent, start_seeder, deploy
    and stop_seeder_and_tracker in one run):

        salt-run state.orchestrate lssd.orch.deploy
        salt-run state.orchestrate lssd.orch.deploy pillar='{"lssd": {"tag": "Deploy2"}}'

    1. the tracker starts on lssd:targets:tracker;
    2. the seeder (lssd:targets:seeder) packs the build, makes the torrent, seeds it and
       publishes the torrent to the mine;
    3. the tracker registers that torrent (it serves nothing else);
    4. with lssd:canary, the canary peers deploy first, and the rest only if every canary
       succeeded;
    5. the peers (lssd:targets:peer, compound) download and install the tag, all at once or
       lssd:batch at a time: a failing peer fails the run and is named, the others still
       complete; the seeder keeps seeding across the waves;
    6. seeding and the tracker stop, whatever happened before (order: last, no requisites).

    Read on the master (its pillar, whose id is the master's id, by default <hostname>_master,
    plus pillar= of this run): tag, targets, batch, canary, job_timeout, timeout and the
    tracker's address. Each role gets only the run-wide values (lssd/orch/run.jinja); the rest
    (destination_path, owner, current, keep, linger, hooks ...) each minion reads from its own
    pillar. A missing tag or target, or a target that matches no minion, fails here, before
    any job starts.
-#}
{%- from "lssd/orch/run.jinja" import lssd, require_on_master, minions, run_pillar, batch,
                                      job_timeout, peer_timeout with context %}
{{- require_on_master(["tag", "targets:tracker", "targets:seeder", "targets:peer"], "lssd.orch.deploy") }}
{%- set targets = lssd.targets %}
{%- do minions(targets.tracker, "lssd:targets:tracker", "lssd.orch.deploy") %}
{%- do minions(targets.seeder, "lssd:targets:seeder", "lssd.orch.deploy") %}
{%- set peers = minions(targets.peer, "lssd:targets:peer", "lssd.orch.deploy")|load_json %}
{%- set tracker_and_seeder = "( " ~ targets.tracker ~ " ) or ( " ~ targets.seeder ~ " )" %}

{#- Canary: a count takes the first peers by id; a target takes the peers it matches. #}
{%- set canary = lssd.canary %}
{%- set canary_tgt = none %}
{%- set rest_tgt = targets.peer %}
{%- set rest_count = peers|length %}
{%- if canary is not none and canary != "" %}
{%-   if canary is number or (canary is string and canary.isdigit()) %}
{%-     if canary is sameas true or canary is sameas false or canary|int < 1 %}
{{-       raise("lssd.orch.deploy: lssd:canary " ~ canary|json ~ " must be a count of 1 or more, "
                ~ "or a compound target") }}
{%-     endif %}
{%-     set chosen = peers[:canary|int] %}
{%-     set canary_tgt = "L@" ~ chosen|join(",") %}
{%-     set rest_count = peers|length - chosen|length %}
{%-   elif canary is string %}
{%-     set canary_tgt = "( " ~ targets.peer ~ " ) and ( " ~ canary ~ " )" %}
{%-     set chosen = minions(canary_tgt, "lssd:canary (within lssd:targets:peer)", "lssd.orch.deploy")|load_json %}
{%-     set rest_count = peers|length - chosen|length %}
{%-   else %}
{{-     raise("lssd.orch.deploy: lssd:canary " ~ canary|json ~ " must be a count of 1 or more, "
              ~ "or a compound target") }}
{%-   endif %}
{%-   set rest_tgt = "( " ~ targets.peer ~ " ) and not ( " ~ canary_tgt ~ " )" %}
{%- endif %}


lssd-tracker:
  salt.state:
    - tgt: {{ targets.tracker|json }}
    - tgt_type: compound
    - sls: lssd.tracker
    - pillar: {{ run_pillar|json }}
    - expect_minions: true
    - timeout: {{ job_timeout }}

lssd-seeder:
  salt.state:
    - tgt: {{ targets.seeder|json }}
    - tgt_type: compound
    - sls: lssd.seeder
    - pillar: {{ run_pillar|json }}
    - expect_minions: true
    - timeout: {{ job_timeout }}
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
    - kwarg:
        seeder: {{ targets.seeder|json }}
    - expect_minions: true
    - timeout: {{ job_timeout }}
    - require:
      - salt: lssd-seeder

{%- if canary_tgt is not none %}

# The canaries deploy first; the other peers start only if every one of them succeeded.
lssd-canary:
  salt.state:
    - tgt: {{ canary_tgt|json }}
    - tgt_type: compound
    - sls: lssd.peer
    - pillar: {{ run_pillar|json }}
    - expect_minions: true
    - timeout: {{ peer_timeout }}
{%-   if batch is not none %}
    - batch: {{ batch|json }}
{%-   endif %}
    - require:
      - salt: lssd-tracker-allow
{%- endif %}

{%- if rest_count > 0 %}

lssd-peers:
  salt.state:
    - tgt: {{ rest_tgt|json }}
    - tgt_type: compound
    - sls: lssd.peer
    - pillar: {{ run_pillar|json }}
    - expect_minions: true
    - timeout: {{ peer_timeout }}
{%-   if batch is not none %}
    - batch: {{ batch|json }}
{%-   endif %}
    - require:
      - salt: {{ "lssd-canary" if canary_tgt is not none else "lssd-tracker-allow" }}
{%- endif %}

# Cleanup runs last and unconditionally: a failed peer (or seeder) must not leave the seeder
# and the tracker running. Finished peers keep seeding lssd:linger seconds, then stop.
lssd-stop:
  salt.state:
    - tgt: {{ tracker_and_seeder|json }}
    - tgt_type: compound
    - sls: lssd.stop
    - pillar: {{ run_pillar|json }}
    - timeout: {{ job_timeout }}
    - order: last
