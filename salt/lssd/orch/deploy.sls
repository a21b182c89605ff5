{#- One deploy, end to end (ansible-lssd's start_tracker, create_torrent, start_seeder, deploy
    and stop_seeder_and_tracker in one run):

        salt-run state.orchestrate lssd.orch.deploy
        salt-run state.orchestrate lssd.orch.deploy pillar='{"lssd": {"tag": "Deploy2"}}'

    1. the tracker starts on lssd:targets:tracker;
    2. the seeder (lssd:targets:seeder) packs the build, makes the torrent, seeds it and
       publishes the torrent to the mine, tagged with this run's id;
    3. the tracker registers that torrent (it serves nothing else);
    4. with lssd:canary, the canary peers deploy first, and the rest only if every canary
       succeeded;
    5. the peers (lssd:targets:peer, compound) download and install the tag, all at once or
       lssd:batch at a time: a failing peer fails the run and is named, the others still
       complete; the seeder keeps seeding across the waves;
    6. seeding of this tag and the tracker stop, whatever happened before.

    Steps 1, 2 and 3 start together (parallel): the tracker's job does not hold the seeder's
    back, and the tracker's registration waits for the torrent the seeder publishes for this
    run (lssd:run_id). The peers start once it is registered, not beside the seeder: on
    hosts that share cores with the seeder (the bench's lab) their jobs' start-up slowed the
    seeder and the tracker more than it saved (bench/README.md). If the tracker or the seeder
    fails, the waits for it are told so (lssd.abort_run) and end at once; the peers start only
    if the tracker's step succeeded too.

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


# Every step requires it, so that lssd.orch.site can hold the whole run back until lssd.setup
# is done (require_in). The stop steps require it "or any other step", which makes them wait
# for every step and then run whatever the other steps' results.
lssd-run:
  test.succeed_without_changes:
    - name: {{ ("lssd run " ~ run_pillar.lssd.run_id ~ " of " ~ lssd.tag)|json }}

lssd-tracker:
  salt.state:
    - tgt: {{ targets.tracker|json }}
    - tgt_type: compound
    - sls: lssd.tracker
    - pillar: {{ run_pillar|json }}
    # Tracker and seeder touch only their own files, so when one minion holds both roles
    # their state runs go side by side instead of one waiting for the other.
    - concurrent: true
    - expect_minions: true
    - timeout: {{ job_timeout }}
    - parallel: true
    - require:
      - test: lssd-run

# Waits for the tracker's address in the mine unless the pillar names the tracker's host.
lssd-seeder:
  salt.state:
    - tgt: {{ targets.seeder|json }}
    - tgt_type: compound
    - sls: lssd.seeder
    - pillar: {{ run_pillar|json }}
    - concurrent: true
    - expect_minions: true
    - timeout: {{ job_timeout }}
    - parallel: true
    - require:
      - test: lssd-run

# The tracker reads the torrent from the mine entry the seeder publishes for this run.
lssd-tracker-allow:
  salt.function:
    - name: lssd.tracker_allow
    - tgt: {{ targets.tracker|json }}
    - tgt_type: compound
    - arg:
      - {{ lssd.tag|json }}
    - kwarg:
        seeder: {{ targets.seeder|json }}
        run_id: {{ run_pillar.lssd.run_id|json }}
        wait: {{ job_timeout }}
{%- if run_pillar.lssd.app is defined %}
        app: {{ run_pillar.lssd.app|json }}
{%- endif %}
    - expect_minions: true
    - timeout: {{ job_timeout * 2 }}
    - parallel: true
    - require:
      - test: lssd-run

{%- if canary_tgt is not none %}

# The canaries deploy first; the other peers start only if every one of them succeeded.
lssd-canary:
  salt.state:
    - tgt: {{ canary_tgt|json }}
    - tgt_type: compound
    - sls: lssd.peer
    - pillar: {{ run_pillar|json }}
    # A peer that is also the tracker or seeder waits for their state runs instead of failing.
    # A number, not true: Salt 3008 defers a queue: true run and returns at once, while a
    # number (the most state runs to wait behind) keeps the job waiting, as the step expects.
    - queue: 100
    - expect_minions: true
    - timeout: {{ peer_timeout }}
{%-   if batch is not none %}
    - batch: {{ batch|json }}
{%-   endif %}
    - parallel: true
    - require:
      - test: lssd-run
      - salt: lssd-tracker
      - salt: lssd-tracker-allow
{%- endif %}

{%- if rest_count > 0 %}

lssd-peers:
  salt.state:
    - tgt: {{ rest_tgt|json }}
    - tgt_type: compound
    - sls: lssd.peer
    - pillar: {{ run_pillar|json }}
    - queue: 100
    - expect_minions: true
    - timeout: {{ peer_timeout }}
{%-   if batch is not none %}
    - batch: {{ batch|json }}
{%-   endif %}
    - parallel: true
    - require:
      - test: lssd-run
      - salt: lssd-tracker
      - salt: lssd-tracker-allow
{%-   if canary_tgt is not none %}
      - salt: lssd-canary
{%-   endif %}
{%- endif %}

# A failed seeder or tracker means no torrent (or no tracker address) for this run: the
# tracker's registration waiting for the torrent, and a seeder waiting for the tracker's
# address in the mine, stop waiting and fail now, not after lssd:job_timeout.
lssd-abort:
  salt.function:
    - name: lssd.abort_run
    - tgt: {{ ("( " ~ targets.tracker ~ " ) or ( " ~ targets.seeder ~ " )")|json }}
    - tgt_type: compound
    - arg:
      - {{ run_pillar.lssd.run_id|json }}
    - kwarg:
        reason: {{ ("the seeder (" ~ targets.seeder ~ ") or the tracker (" ~ targets.tracker
                    ~ ") of this run failed; see lssd-seeder and lssd-tracker")|json }}
    - timeout: {{ job_timeout }}
    - onfail:
      - salt: lssd-tracker
      - salt: lssd-seeder

# Cleanup, whatever happened before: a failed peer (or seeder) must not leave the seeder and
# the tracker running. Both steps wait for every other step (see lssd-run), then run at once.
# Only this run's tag stops seeding. Finished peers keep seeding lssd:linger seconds, then stop.
{%- for step, role, function, args in [("lssd-stop-seeding", targets.seeder, "lssd.seed_stop", [lssd.tag]),
                                       ("lssd-stop-tracker", targets.tracker, "lssd.tracker_stop", [])] %}

{{ step }}:
  salt.function:
    - name: {{ function }}
    - tgt: {{ role|json }}
    - tgt_type: compound
{%-   if args %}
    - arg: {{ args|json }}
{%-   endif %}
{%-   if function == "lssd.seed_stop" and run_pillar.lssd.app is defined %}
    - kwarg:
        app: {{ run_pillar.lssd.app|json }}
{%-   endif %}
    - timeout: {{ job_timeout }}
    - parallel: true
    - require_any:
      - test: lssd-run
      - salt: lssd-tracker
      - salt: lssd-seeder
      - salt: lssd-tracker-allow
{%-   if canary_tgt is not none %}
      - salt: lssd-canary
{%-   endif %}
{%-   if rest_count > 0 %}
      - salt: lssd-peers
{%-   endif %}
      - salt: lssd-abort
{%- endfor %}
{#- BEGIN lssd-verify: the run's outcome from the master's job cache. #}
{%- if canary_tgt is not none or rest_count > 0 %}

# The peer steps above take each peer's return from the master's event bus, where any minion
# can fire a return in another minion's name. This last step reads the returns the master
# stored from each peer itself (its job cache) and fails naming every peer whose return is a
# failure or missing, waiting at most a peer step's timeout for returns still on their way.
lssd-verify:
  salt.runner:
    - name: lssd.verify
    - run_id: {{ run_pillar.lssd.run_id|json }}
    - wait: {{ peer_timeout }}
    - require_any:
      - test: lssd-run
      - salt: lssd-stop-seeding
      - salt: lssd-stop-tracker
{%- endif %}
{#- END lssd-verify #}
