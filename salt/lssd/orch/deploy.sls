{#- One deploy, end to end (ansible-lssd's start_tracker, create_torrent, start_seeder, deploy
    and stop_seeder_and_tracker in one run):

        salt-run state.orchestrate lssd.orch.deploy
        salt-run state.orchestrate lssd.orch.deploy pillar='{"lssd": {"tag": "Deploy2"}}'

    1. the tracker starts on lssd:targets:tracker;
    2. the seeder (lssd:targets:seeder) packs the build, makes the torrent, seeds it and
       publishes it, tagged with this run's id;
    3. the tracker registers that torrent (it serves nothing else);
    4. with lssd:canary, the canary peers deploy first, and the rest only if every canary
       succeeded;
    5. the peers (lssd:targets:peer) download and install the tag, all at once or lssd:batch
       at a time: a failing peer fails the run and is named, the others still complete; the
       seeder keeps seeding across the waves;
    6. seeding of this tag and the tracker stop, whatever happened before; the peers'
       results are checked against the master's job cache (lssd-verify), and the master
       forgets the run.

    The run is planned on the master by one call, the runner lssd.plan, which salt-run
    lssd.deploy shares: it checks the run-wide settings of the master's pillar (plus pillar= of
    this run: tag, targets, batch, canary, timeout, job_timeout, the tracker's address), resolves
    each role's minions once, chooses the canary and batch waves, and registers the run with the
    master's lssd ext_pillar, through which the run's minions alone read its torrent. A missing
    key, a bad value or a target that matches no minion fails here, before any job starts.
    Every step targets the minions the plan resolved (a list), and each role gets only the
    run-wide values (the plan's run_pillar); the rest (destination_path, owner, current, keep,
    linger, hooks ...) each minion reads from its own pillar.

    Steps 1, 2 and 3 start together (parallel): the tracker's job does not hold the seeder's
    back, and the tracker's registration waits for the torrent the seeder publishes for this
    run. The peers start once it is registered. If the tracker or the seeder fails, the waits
    for it are told so (lssd.abort_run) and end at once; the peers start only if the tracker's
    step succeeded too.
-#}
{%- set plan = salt["saltutil.runner"]("lssd.plan", lssd=salt["pillar.get"]("lssd", {}),
                                        register=not opts.get("test", False)) %}
{%- if plan is not mapping or "run_id" not in plan %}
{{-   raise("lssd.orch.deploy: " ~ (plan.error if plan is mapping and plan.error else
            "the master could not plan the run (runner lssd.plan): " ~ plan|string)) }}
{%- endif %}
{%- set roles = plan.roles %}
{%- set run_pillar = plan.run_pillar %}
{%- set job_timeout = plan.job_timeout %}
{%- set control = roles.tracker + roles.seeder %}


# Every step requires it, so that lssd.orch.site can hold the whole run back until lssd.setup
# is done (require_in). The stop steps require it "or any other step", which makes them wait
# for every step and then run whatever the other steps' results.
lssd-run:
  test.succeed_without_changes:
    - name: {{ ("lssd run " ~ plan.run_id ~ " of " ~ plan.tag)|json }}

lssd-tracker:
  salt.state:
    - tgt: {{ roles.tracker|json }}
    - tgt_type: list
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
    - tgt: {{ roles.seeder|json }}
    - tgt_type: list
    - sls: lssd.seeder
    - pillar: {{ run_pillar|json }}
    - concurrent: true
    - expect_minions: true
    - timeout: {{ job_timeout }}
    - parallel: true
    - require:
      - test: lssd-run

{%- if plan.down %}

# lssd:unreachable skip: these peers did not answer the plan's test.ping; the others deploy.
lssd-down:
  test.fail_without_changes:
    - name: lssd-down
    - comment: {{ ("down: " ~ plan.down|join(", ") ~ " did not answer test.ping before the run "
                   ~ "(lssd:unreachable skip); not deployed")|json }}
{%- endif %}

# The tracker reads the torrent the seeder publishes for this run (its ext_pillar entry).
lssd-tracker-allow:
  salt.function:
    - name: lssd.tracker_allow
    - tgt: {{ roles.tracker|json }}
    - tgt_type: list
    - arg:
      - {{ plan.tag|json }}
    - kwarg:
        run_id: {{ plan.run_id|json }}
        wait: {{ job_timeout }}
{%- if plan.app %}
        app: {{ plan.app|json }}
{%- endif %}
    - expect_minions: true
    - timeout: {{ job_timeout * 2 }}
    - parallel: true
    - require:
      - test: lssd-run

{#- The waves of peers (lssd.plan): the canaries first, if any; the others only if every
    canary succeeded; each wave lssd:batch at a time. #}
{%- set waves = [] %}
{%- for wave in plan.waves %}
{%-   set step = "lssd-" ~ wave.name %}

{{ step }}:
  salt.state:
    - tgt: {{ wave.minions|json }}
    - tgt_type: list
    - sls: lssd.peer
    - pillar: {{ run_pillar|json }}
    # A peer that is also the tracker or seeder waits for their state runs instead of failing.
    # A number, not true: Salt 3008 defers a queue: true run and returns at once, while a
    # number (the most state runs to wait behind) keeps the job waiting, as the step expects.
    - queue: 100
    - expect_minions: true
    - timeout: {{ plan.peer_timeout }}
{%-   if plan.batch %}
    - batch: {{ plan.batch|json }}
{%-   endif %}
    - parallel: true
    - require:
      - test: lssd-run
      - salt: lssd-tracker
      - salt: lssd-tracker-allow
{%-   for before in waves %}
      - salt: {{ before }}
{%-   endfor %}
{%-   do waves.append(step) %}
{%- endfor %}

# A failed seeder or tracker means no torrent (or no tracker address) for this run: the
# tracker's registration waiting for the torrent, and a seeder waiting for the tracker's
# address, stop waiting and fail now, not after lssd:job_timeout.
lssd-abort:
  salt.function:
    - name: lssd.abort_run
    - tgt: {{ control|unique|list|json }}
    - tgt_type: list
    - arg:
      - {{ plan.run_id|json }}
    - kwarg:
        reason: {{ ("the seeder (" ~ roles.seeder|join(", ") ~ ") or the tracker ("
                    ~ roles.tracker|join(", ") ~ ") of this run failed; see lssd-seeder and lssd-tracker")|json }}
    - timeout: {{ job_timeout }}
    - onfail:
      - salt: lssd-tracker
      - salt: lssd-seeder

# Cleanup, whatever happened before: a failed peer (or seeder) must not leave the seeder and
# the tracker running. Both steps wait for every other step (see lssd-run), then run at once.
# Only this run's tag stops seeding. Finished peers keep seeding lssd:linger seconds, then stop.
{%- for step, minions, function, args in [("lssd-stop-seeding", roles.seeder, "lssd.seed_stop", [plan.tag]),
                                          ("lssd-stop-tracker", roles.tracker, "lssd.tracker_stop", [])] %}

{{ step }}:
  salt.function:
    - name: {{ function }}
    - tgt: {{ minions|json }}
    - tgt_type: list
{%-   if args %}
    - arg: {{ args|json }}
{%-   endif %}
{%-   if function == "lssd.seed_stop" and plan.app %}
    - kwarg:
        app: {{ plan.app|json }}
{%-   endif %}
    - timeout: {{ job_timeout }}
    - parallel: true
    - require_any:
      - test: lssd-run
      - salt: lssd-tracker
      - salt: lssd-seeder
      - salt: lssd-tracker-allow
{%-   for wave in waves %}
      - salt: {{ wave }}
{%-   endfor %}
      - salt: lssd-abort
{%- endfor %}

# The peer steps above take each peer's return from the master's event bus, where any minion
# can fire a return in another minion's name. This last step reads the returns the master
# stored from each peer itself (its job cache) and fails naming every peer whose return is a
# failure or missing, waiting at most a peer step's timeout for returns still on their way.
# Then the master forgets the run: its minions are served nothing more for it.
lssd-verify:
  salt.runner:
    - name: lssd.verify
    - run_id: {{ plan.run_id|json }}
    - wait: {{ plan.peer_timeout }}
    - end_run: true
    - require_any:
      - test: lssd-run
      - salt: lssd-stop-seeding
      - salt: lssd-stop-tracker
