"""The orchestrate as a control plane: what it hands the roles, what it refuses up front,
canaries and waves, rollback.

Every test stands alone (``-k`` runs any one of them) on its own tags and directories (the
``case`` fixture).
"""

import json
import socket
import sys
import time

import pytest

from .lssd_integration import REPO, PEERS, minion_states, orchestrate_errors, orchestrate_states, wait_until

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO / "bench"))
import fakefleet  # noqa: E402  bench/fakefleet.py

RUN_WIDE = {"tag", "run_id", "targets", "tracker", "rollback_to", "run_peers"}


def assert_ok(ret):
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert all(state["result"] is True for state in states.values()), states
    return states


def assert_no_job_ran(lssd_env, case):
    assert lssd_env.call("seeder", "lssd.torrent_info", case.tag) is None
    assert lssd_env.call("tracker", "lssd.tracker_status")["running"] is False
    assert not lssd_env.processes()
    for peer in PEERS:
        assert case.tags_in(peer) == []


def test_every_step_has_a_timeout_and_roles_get_run_wide_values_only(lssd_env, case):
    case.pillar(job_timeout=321, timeout=100, batch="50%")
    plan = lssd_env.orchestrate_plan()
    steps = {k: v for k, v in plan.items() if v["function"] in ("salt.state", "salt.function")}
    assert set(steps) == {"lssd-tracker", "lssd-seeder", "lssd-tracker-allow", "lssd-peers", "lssd-abort",
                          "lssd-stop-seeding", "lssd-stop-tracker"}
    # The peers' job is their download (lssd:timeout) and a job's worth of the rest; the
    # tracker's registration waits a job's worth for the torrent, then takes a job's worth.
    expected = {"lssd-peers": 100 + 321, "lssd-tracker-allow": 2 * 321}
    for step_id, step in steps.items():
        assert step["timeout"] == expected.get(step_id, 321), (step_id, step)
    assert plan["lssd-peers"]["batch"] == "50%"
    # Tracker, seeder and the tracker's registration start together, the peers once the
    # torrent is registered; the stop steps wait for all of them, whatever their results,
    # and stop only this run's tag.
    assert {k for k, step in steps.items() if step.get("parallel")} == {
        "lssd-tracker", "lssd-seeder", "lssd-tracker-allow", "lssd-peers", "lssd-stop-seeding", "lssd-stop-tracker"}
    assert {"salt": "lssd-tracker-allow"} in plan["lssd-peers"]["require"]
    assert {"salt": "lssd-tracker"} in plan["lssd-peers"]["require"]
    assert plan["lssd-stop-seeding"]["arg"] == [case.tag]
    for stop in ("lssd-stop-seeding", "lssd-stop-tracker"):
        waits_for = {next(iter(r.values())) for r in plan[stop]["require_any"]}
        assert waits_for == {"lssd-run", "lssd-tracker", "lssd-seeder", "lssd-tracker-allow", "lssd-peers",
                             "lssd-abort"}, stop
    assert plan["lssd-tracker-allow"]["kwarg"]["run_id"] == plan["lssd-peers"]["pillar"]["lssd"]["run_id"]
    # Last, the outcome from the job cache: this run's peers, waiting a peer step's timeout.
    assert plan["lssd-verify"]["function"] == "salt.runner" and plan["lssd-verify"]["name"] == "lssd.verify"
    assert plan["lssd-verify"]["run_id"] == plan["lssd-peers"]["pillar"]["lssd"]["run_id"]
    assert plan["lssd-verify"]["wait"] == 100 + 321
    assert {next(iter(r.values())) for r in plan["lssd-verify"]["require_any"]} == {
        "lssd-run", "lssd-stop-seeding", "lssd-stop-tracker"}
    run_ids = set()
    for step_id, step in steps.items():
        if step["function"] != "salt.state":
            continue
        handed = step["pillar"]["lssd"]
        assert set(handed) <= RUN_WIDE, (step_id, handed)
        assert handed["tag"] == case.tag
        assert handed["tracker"] == {"host": "127.0.0.1", "port": lssd_env.tracker_port}
        assert handed["targets"] == {"tracker": "tracker", "seeder": "seeder", "peer": "web*"}
        run_ids.add(handed["run_id"])
    assert len(run_ids) == 1, run_ids


def test_no_master_pillar_fails_before_any_job_naming_the_master_id(lssd_env, case):
    # The pillar top no longer matches the master: the orchestrate must not fall back on
    # built-in targets and tags.
    master_id = lssd_env.master_id
    case.top(f"base:\n  '* and not {master_id}':\n    - match: compound\n    - lssd\n    - case\n")
    ret = lssd_env.orchestrate()
    assert ret.returncode != 0
    errors = orchestrate_errors(ret)
    assert f"pillar id {master_id}" in errors, errors
    for key in ("lssd:tag", "lssd:targets:tracker", "lssd:targets:seeder", "lssd:targets:peer"):
        assert key in errors, errors
    assert_no_job_ran(lssd_env, case)


def test_a_target_matching_no_minion_fails_naming_it(lssd_env, case):
    case.pillar(targets={"peer": "nomatch*"})
    ret = lssd_env.orchestrate()
    assert ret.returncode != 0
    errors = orchestrate_errors(ret)
    assert 'lssd:targets:peer "nomatch*" matches no minion' in errors, errors
    assert_no_job_ran(lssd_env, case)


def test_a_role_missing_a_required_key_names_it_and_the_minion(lssd_env, case):
    case.pillar(destination_path=None)
    ret = lssd_env.salt.run("state.apply", "lssd.peer", minion_tgt="web1")
    assert ret.returncode != 0
    # The state's own comment, not a render error wrapped in a template excerpt.
    (deployed,) = ret.data.values()
    assert deployed["result"] is False, ret.data
    assert deployed["comment"].startswith("lssd:destination_path is not set on minion web1: set it in pillar"), ret.data
    # A tag YAML read as a number (1.10 -> 1.1) is refused, saying to quote it.
    case.pillar(tag=1.1)
    ret = lssd_env.salt.run("state.apply", "lssd.seeder", minion_tgt="seeder")
    assert ret.returncode != 0
    assert "lssd:tag 1.1 is a number" in str(ret.data) and "quote it" in str(ret.data), ret.data


def test_canary_failure_stops_the_run_before_other_peers_start(lssd_env, case):
    # canary: 1 takes the first peer by id (web1); something in its way makes it fail.
    case.pillar(canary=1)
    in_the_way = case.destination("web1") / case.tag
    in_the_way.mkdir(parents=True)
    (in_the_way / "precious.txt").write_text("not ours\n")
    ret = lssd_env.orchestrate()
    states = orchestrate_states(ret)
    assert ret.returncode != 0
    canary = states["lssd-canary"]
    assert canary["result"] is False and "web1" in canary["comment"], canary
    assert sorted(minion_states(canary)) == ["web1"]
    rest = states["lssd-peers"]
    assert rest["result"] is False and "requisite" in rest["comment"].lower(), rest
    assert not minion_states(rest)
    # web2 never started: nothing installed, no record, no download.
    assert case.tags_in("web2") == []
    assert lssd_env.call("web2", "lssd.installed", case.tag) is None
    assert not [p for p in lssd_env.state_dir("web2").rglob("*") if case.tag in p.name]
    # Cleanup ran although the canary failed.
    assert states["lssd-stop-seeding"]["result"] is True and states["lssd-stop-tracker"]["result"] is True
    assert not {"tracker", "seeder"} & lssd_env.running_roles()


def test_canary_first_then_the_rest_in_waves(lssd_env, case):
    case.pillar(canary="web2", batch=1)
    plan = lssd_env.orchestrate_plan()
    assert plan["lssd-canary"]["tgt"] == ["web2"] and plan["lssd-peers"]["tgt"] == ["web1"]
    assert plan["lssd-peers"]["batch"] == "1"
    ret = lssd_env.orchestrate()
    states = assert_ok(ret)
    assert sorted(minion_states(states["lssd-canary"])) == ["web2"]
    assert sorted(minion_states(states["lssd-peers"])) == ["web1"]
    assert states["lssd-canary"]["__run_num__"] < states["lssd-peers"]["__run_num__"]
    records = {peer: lssd_env.call(peer, "lssd.installed", case.tag) for peer in PEERS}
    assert records["web2"]["installed"] < records["web1"]["installed"]
    for peer in PEERS:
        assert case.current_of(peer) == case.tag


def rollback_failures(ret):
    """Per peer, the comment of its failed lssd.rollback; every peer must have failed, named."""
    states = orchestrate_states(ret)
    assert ret.returncode != 0 and states["lssd-rollback"]["result"] is False, states
    for peer in PEERS:
        assert peer in states["lssd-rollback"]["comment"], states["lssd-rollback"]["comment"]
    failures = {}
    for peer, results in minion_states(states["lssd-rollback"]).items():
        (result,) = results.values()
        assert result["result"] is False and f"on minion {peer}" in result["comment"], result
        failures[peer] = result["comment"]
    assert sorted(failures) == list(PEERS)
    return failures


def test_rollback_switches_current_with_no_download(lssd_env, case):
    first, second = case.tags(2)
    # A tag bump as an operator does it: pillar= of the run names the tag.
    assert_ok(lssd_env.orchestrate(pillar={"lssd": {"tag": first}}))
    assert_ok(lssd_env.orchestrate(pillar={"lssd": {"tag": second}}))
    for peer in PEERS:
        assert case.current_of(peer) == second
        assert case.tags_in(peer) == [first, second]  # keep: 2
    records = {peer: lssd_env.call(peer, "lssd.installed") for peer in PEERS}
    wait_until(lambda: not lssd_env.processes(), 60, "the lingering peers to exit")

    ret = lssd_env.orchestrate("lssd.orch.rollback")
    states = assert_ok(ret)
    for peer, results in minion_states(states["lssd-rollback"]).items():
        (switched,) = results.values()
        assert switched["changes"], (peer, switched)
    for peer in PEERS:
        assert case.current_of(peer) == first
    # Zero bytes: no download process started, the install records are untouched.
    assert not lssd_env.processes()
    assert {peer: lssd_env.call(peer, "lssd.installed") for peer in PEERS} == records

    # rollback_to names the tag for the whole fleet; forward again is a rollback_to as well.
    assert_ok(lssd_env.orchestrate("lssd.orch.rollback", pillar={"lssd": {"rollback_to": second}}))
    for peer in PEERS:
        assert case.current_of(peer) == second
    # Again: nothing to change.
    ret = lssd_env.orchestrate("lssd.orch.rollback", pillar={"lssd": {"rollback_to": second}})
    states = assert_ok(ret)
    assert not minion_states(states["lssd-rollback"])

    # Nothing before the first tag, and a tag that is not installed: each peer fails, named.
    assert_ok(lssd_env.orchestrate("lssd.orch.rollback"))
    ret = lssd_env.orchestrate("lssd.orch.rollback")
    assert f"no tag older than {first}" in rollback_failures(ret)["web1"]
    ret = lssd_env.orchestrate("lssd.orch.rollback", pillar={"lssd": {"rollback_to": "T-never"}})
    assert "T-never is not installed" in rollback_failures(ret)["web2"]
    assert not lssd_env.processes()
    for peer in PEERS:
        assert case.current_of(peer) == first


def test_a_failing_seeder_aborts_the_registration_and_no_peer_starts(lssd_env, case):
    # The tracker's registration starts beside the seeder and waits for this run's torrent.
    # The seeder fails (its build directory is missing): the wait must end at once, naming
    # the run's abort, not after lssd:job_timeout; no peer starts; nothing is left running.
    case.pillar(seeder_files_path=str(case.dir / "no-such-build"), job_timeout=300)
    started = time.monotonic()
    ret = lssd_env.orchestrate()
    elapsed = time.monotonic() - started
    states = orchestrate_states(ret)
    assert ret.returncode != 0
    assert states["lssd-seeder"]["result"] is False, states["lssd-seeder"]
    assert "no-such-build" in str(states["lssd-seeder"]["changes"]), states["lssd-seeder"]
    assert states["lssd-abort"]["result"] is True, states["lssd-abort"]
    allow = states["lssd-tracker-allow"]
    assert allow["result"] is False and "aborted" in str(allow), allow
    peers = states["lssd-peers"]
    assert peers["result"] is False and "requisite" in peers["comment"].lower(), peers
    assert not minion_states(peers)
    # Well short of the 300 s the registration would otherwise wait for a torrent (not a
    # speed claim: only that the abort, not the timeout, ended the wait).
    assert elapsed < 300, elapsed
    assert states["lssd-stop-tracker"]["result"] is True
    assert_no_job_ran_on_peers(lssd_env, case)
    assert not lssd_env.processes()


def test_a_failing_tracker_starts_no_peer_and_the_seeder_is_stopped(lssd_env, case):
    # The tracker cannot listen (its port is taken). Whether the registration ended by the
    # abort or found the torrent first, no peer may start against a tracker that is not
    # there; the seeder, which started beside it, is stopped; nothing is left running.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        case.pillar(tracker={"host": "127.0.0.1", "port": port, "bind": "127.0.0.1"}, job_timeout=300)
        ret = lssd_env.orchestrate()
    states = orchestrate_states(ret)
    assert ret.returncode != 0
    assert states["lssd-tracker"]["result"] is False, states["lssd-tracker"]
    assert str(port) in str(states["lssd-tracker"]["changes"]), states["lssd-tracker"]
    assert states["lssd-abort"]["result"] is True, states["lssd-abort"]
    peers = states["lssd-peers"]
    assert peers["result"] is False and "requisite" in peers["comment"].lower(), peers
    assert not minion_states(peers)
    assert states["lssd-stop-seeding"]["result"] is True, states["lssd-stop-seeding"]
    assert lssd_env.call("seeder", "lssd.torrent_info", case.tag)["seeding"] is False
    assert_no_job_ran_on_peers(lssd_env, case)
    assert not lssd_env.processes()


def assert_no_job_ran_on_peers(lssd_env, case):
    for peer in PEERS:
        assert case.tags_in(peer) == []
        assert lssd_env.call(peer, "lssd.installed", case.tag) is None


def test_only_the_runs_minions_read_its_torrent_through_the_run_channel(lssd_env, case):
    # A run whose only peer is web1: web2 is an accepted minion of the same master, not
    # targeted. It names the run in its own pillar request and reads the mine: it gets
    # neither the torrent, nor its passkey, nor the deploy's key.
    case.pillar(targets={"tracker": "tracker", "seeder": "seeder", "peer": "web1"})
    plan = lssd_env.salt_run.run("lssd.plan").data
    assert plan["roles"]["peer"] == ["web1"], plan
    run_id = plan["run_id"]
    # unmask: Salt 3008 prints pillar values as ********** unless asked not to.
    ask = ["pillar.items", "pillar=" + json.dumps({"lssd": {"run_id": run_id}}), "unmask=True"]
    try:
        ret = lssd_env.salt.run("state.apply", "lssd.seeder", "pillar=" + json.dumps(plan["run_pillar"]),
                                minion_tgt="seeder")
        assert ret.returncode == 0, ret.stdout
        served = lssd_env.call("web1", *ask).get("lssd_run")
        entry = served["published"]["seeder"][f"lssd_torrent_{case.tag}"]
        assert entry["run_id"] == run_id and entry["torrent"] and entry["credentials"]["key"]
        outsider = json.dumps(lssd_env.call("web2", *ask))
        assert "lssd_run" not in outsider and entry["credentials"]["key"] not in outsider
        assert lssd_env.call("web2", "mine.get", "seeder", f"lssd_torrent_{case.tag}") == {}
        assert lssd_env.salt_run.run("lssd.run_end", run_id).data["forgotten"] is True
        assert "lssd_run" not in lssd_env.call("web1", *ask)
    finally:
        lssd_env.salt.run("lssd.seed_stop", case.tag, minion_tgt="seeder")
        lssd_env.salt_run.run("lssd.run_end", run_id)


def test_a_run_interrupted_after_seeding_does_not_break_the_next_run_of_the_tag(lssd_env, case):
    # An earlier run (its salt-run killed) left the tracker and the seeder running, its entry
    # published for its own run id. The next run of the same tag must publish for itself.
    earlier = lssd_env.salt_run.run("lssd.plan").data
    try:
        for role, sls in (("tracker", "lssd.tracker"), ("seeder", "lssd.seeder")):
            ret = lssd_env.salt.run("state.apply", sls, "pillar=" + json.dumps(earlier["run_pillar"]), minion_tgt=role)
            assert ret.returncode == 0, ret.stdout
        states = assert_ok(lssd_env.orchestrate())
        seeding = minion_states(states["lssd-seeder"])["seeder"]
        assert any("published" in str(s.get("comment")) or s.get("changes") for s in seeding.values()), seeding
        for peer in PEERS:
            assert case.tags_in(peer) == [case.tag]
    finally:
        lssd_env.salt.run("lssd.seed_stop", case.tag, minion_tgt="seeder")
        lssd_env.salt.run("lssd.tracker_stop", minion_tgt="tracker")
        lssd_env.salt_run.run("lssd.run_end", earlier["run_id"])


def test_a_down_peer_is_named_before_any_job_and_skip_deploys_the_others(lssd_env, case):
    web2 = lssd_env.minions["web2"]
    web2.terminate()
    try:
        errors = orchestrate_errors(lssd_env.orchestrate())
        assert "down: web2 did not answer test.ping within 10s" in errors, errors
        assert "lssd:unreachable is fail" in errors, errors
        assert_no_job_ran(lssd_env, case)
        case.pillar(unreachable="skip")
        ret = lssd_env.orchestrate()
        states = orchestrate_states(ret)
        assert ret.returncode != 0
        assert states["lssd-down"]["result"] is False and "down: web2" in states["lssd-down"]["comment"], states
        assert states["lssd-peers"]["result"] is True, states["lssd-peers"]
        assert case.tags_in("web1") == [case.tag]
        assert states["lssd-stop-seeding"]["result"] is True and states["lssd-stop-tracker"]["result"] is True
    finally:
        # Whatever failed above, the other tests need web2 back (salt-factories' stopped()
        # restarts a daemon only when its block raised nothing).
        web2.start()
        wait_until(lambda: lssd_env.salt.run("test.ping", minion_tgt="web2").data is True, 120, "web2 to answer again")


def test_a_deploy_on_a_master_with_thousands_of_idle_accepted_minions(lssd_env, case):
    # A big fleet's master: 3,000 more accepted minions (keys and cached grains, half with
    # role: web) that the run does not target and that never answer. The run's plan resolves
    # the real peers once, and their reads go through the run channel, not the mine.
    fakefleet.add_to_master(lssd_env.master.config, 3000)
    try:
        assert len(fakefleet.existing(lssd_env.master.config["pki_dir"])) == 3000
        plan = lssd_env.salt_run.run("lssd.plan", "register=False").data
        assert plan["roles"]["peer"] == list(PEERS), plan
        states = assert_ok(lssd_env.orchestrate())
        assert sorted(minion_states(states["lssd-peers"])) == list(PEERS)
        for peer in PEERS:
            assert case.tags_in(peer) == [case.tag]
    finally:
        fakefleet.remove_from_master(lssd_env.master.config)
