"""A minion that is not targeted forges a peer's success; the deploy still reports the failure.

Any accepted minion can fire events under any tag Salt does not blacklist, with any data:
``salt/job/<jid>/ret/<another minion>`` (through ``event.fire_master``, or the ``events`` list
of the minion's ``fire_master`` request, whose data is put on the master's bus as it is) and
``lssd/peer/<tag>/complete``. The jid is no secret: every minion sees every publication.

Here web2 is not a target of the run; web1 is, and its deploy fails for real (its target
directory is not empty). So that the forgery certainly arrives first, web1's state runs are
held behind a blocking state run (the peer job queues behind it) until the forged events are
on the master's bus; then web1 runs and fails. The runner, ``lssd.report`` and the orchestrate
must all report web1's real failure.
"""

import concurrent.futures
import json
import time

import pytest

from .lssd_integration import orchestrate_states, wait_until

pytestmark = pytest.mark.integration


def hold_state_runs(env, minion, gate):
    """Start a state run on ``minion`` that lasts until ``gate`` exists; wait until it runs."""
    script = f"timeout 900 sh -c 'until [ -e {gate} ]; do sleep 0.2; done'"
    ret = env.salt.run("--async", "state.single", "cmd.run", f"name={script}", minion_tgt=minion)
    assert ret.returncode == 0, ret.stderr
    wait_until(lambda: env.call(minion, "saltutil.is_running", "state.single"), 120,
               f"the holding state run on {minion}")


def peer_job(env, fun):
    """The jid of the peer job (``fun``) queued on web1 behind the holding state run."""
    def found():
        running = env.call("web1", "saltutil.running") or []
        return next((job["jid"] for job in running if job.get("fun") == fun), None)

    return wait_until(found, 300, f"the {fun} peer job queued on web1", interval=1)


def forge_success(env, event_listener, jid, tag, state_id):
    """From web2: web1's job ``jid`` succeeded, in both event forms, and its complete event."""
    deployed = {"bytes": 21_000_000, "seconds": 1.0, "from_seeder": 21_000_000, "from_peers": 0,
                "install_seconds": 0.1, "target": "/forged"}
    forged = {"id": "web1", "jid": jid, "fun": "state.high", "retcode": 0, "success": True,
              "return": {f"lssd_|-{state_id}_|-{tag}_|-deployed": {
                  "result": True, "comment": f"deployed {tag}", "changes": {"deployed": deployed}}}}
    since = time.time()
    env.call("web2", "event.fire_master", json.dumps(forged), f"salt/job/{jid}/ret/web1")
    events = [{"tag": f"salt/job/{jid}/ret/web1", "data": forged},
              {"tag": f"lssd/peer/{tag}/complete", "data": {"id": "web1", "data": deployed}}]
    request = {"data": {}, "tag": "lssd-forgery", "events": events, "pretag": None}
    env.call("web2", "event.fire", json.dumps(request), "fire_master")

    # The attack was delivered: the master's bus carries a return for web1 that web1 never sent.
    def delivered():
        found = event_listener.get_events([(env.master.id, f"salt/job/{jid}/ret/web1")], after_time=since)
        return [e for e in found if e.data.get("success") is True and e.data.get("id") == "web1"]

    wait_until(delivered, 120, "the forged return of web1 on the master's bus")


def attacked_deploy(env, case, event_listener, start, fun, state_id, **pillar):
    """Deploy to web1 alone with ``start`` while web2 forges web1's success; web1 really
    fails (its target is a directory that is not empty). Returns (what ``start`` returned,
    the peer job's jid)."""
    case.pillar(targets={"tracker": "tracker", "seeder": "seeder", "peer": "web1"}, **pillar)
    target = case.destination("web1") / case.tag
    target.mkdir(parents=True)
    (target / "left-over").write_text("not ours\n")
    gate = case.dir / "gate"
    hold_state_runs(env, "web1", gate)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            running = pool.submit(start)
            jid = peer_job(env, fun)
            forge_success(env, event_listener, jid, case.tag, state_id)
        finally:
            gate.touch()
        return running.result(), jid


def test_runner_reports_the_real_failure_despite_a_forged_success(lssd_env, case, event_listener):
    ret, jid = attacked_deploy(lssd_env, case, event_listener, lambda: lssd_env.salt_run.run("lssd.deploy"),
                               "state.high", case.tag)
    assert ret.returncode == 1, ret.stdout
    assert ret.data["result"] is False
    assert "is not empty" in ret.data["failed"]["web1"], ret.data["failed"]
    assert ret.data["minions"]["web1"]["result"] == "failed"
    assert "web2" not in ret.data["minions"]

    report = lssd_env.salt_run.run("lssd.report", f"tag={case.tag}")
    assert report.returncode == 0, report.stdout
    assert report.data["minions"]["web1"]["result"] == "failed", report.data
    assert "is not empty" in report.data["failed"]["web1"]
    assert jid in report.data["jids"]


def test_orchestrate_fails_naming_the_peer_whose_success_was_forged(lssd_env, case, event_listener):
    # The forged success ends Salt's peer step early, so seeding stops before web1 runs: web1
    # then fails waiting for the seeder (job_timeout) before it checks its target.
    ret, _ = attacked_deploy(lssd_env, case, event_listener, lssd_env.orchestrate, "state.sls", "lssd-deployed",
                             job_timeout=90)
    states = orchestrate_states(ret)
    assert ret.returncode != 0, states
    assert states["lssd-peers"]["result"] is True, "the forgery did not fool Salt's own step"
    verify = states["lssd-verify"]
    assert verify["result"] is False, verify
    found = verify["changes"]["return"]
    # web1's own return, waited for: not a missing one.
    reason = found["failed"]["web1"]
    assert "is not empty" in reason or "no seeder publishes" in reason, found
    assert f"web1: {reason}" in found["comment"]

    report = lssd_env.salt_run.run("lssd.report", f"tag={case.tag}")
    assert report.data["minions"]["web1"]["result"] == "failed", report.data
