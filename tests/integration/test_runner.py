"""The ``lssd`` runner against real daemons: deploy and its table, failures, status, report,
the ``failed`` event and the grains.

``salt-run`` runs here with ``--out=json`` (salt-factories), so the runner shows no live
display and prints only its return data, which these tests read.
"""

import time

import pytest

from .lssd_integration import PEERS, wait_until

pytestmark = pytest.mark.integration


def deploy(env, *args):
    return env.salt_run.run("lssd.deploy", *args)


def test_deploy_deploys_every_peer_and_returns_the_table(lssd_env, case):
    ret = deploy(lssd_env)
    assert ret.returncode == 0, ret.stdout
    data = ret.data
    assert data["tag"] == case.tag and data["result"] is True and data["failed"] == {}
    assert sorted(data["minions"]) == sorted(PEERS)
    for peer in PEERS:
        row = data["minions"][peer]
        assert row["result"] == "ok", row
        assert row["bytes"] > 0 and row["seconds"] > 0
        # Every byte came from the swarm (a block may arrive twice, never one less).
        assert row["from_seeder"] + row["from_peers"] >= row["bytes"]
        assert row["target"] == str(case.destination(peer) / case.tag)
        assert case.current_of(peer) == case.tag
    assert all(data["phases"][p]["result"] for p in ("tracker", "seeder", "allow", "stop"))
    # The pipeline stopped seeder and tracker; only lingering peers may remain.
    assert not {"tracker", "seeder"} & lssd_env.running_roles()

    # The same table again, from the job cache.
    report = lssd_env.salt_run.run("lssd.report", f"tag={case.tag}")
    assert report.returncode == 0, report.stdout
    assert {m: r["result"] for m, r in report.data["minions"].items()} == {p: "ok" for p in PEERS}
    assert any(line.startswith("web1 ") for line in report.data["table"])


def test_a_failing_peer_makes_deploy_exit_non_zero_naming_it_and_the_reason(lssd_env, case, event_listener):
    # web2 alone cannot download: it listens on an address no interface has (TEST-NET-1),
    # so libtorrent has no socket to connect or announce from; 10 s at most to find out.
    (lssd_env.pillar_dir / "runner_web2.sls").write_text("lssd:\n  timeout: 10\n  listen: '192.0.2.1:6881'\n")
    case.top("base:\n  '*':\n    - lssd\n    - case\n  web2:\n    - runner_web2\n")
    since = time.time()
    ret = deploy(lssd_env)
    assert ret.returncode != 0, ret.stdout
    assert ret.data["result"] is False
    assert list(ret.data["failed"]) == ["web2"], ret.data["failed"]
    reason = ret.data["failed"]["web2"]
    # The reason names the cause: the address web2 could not listen on.
    assert "192.0.2.1:6881" in reason, reason
    assert ret.data["minions"]["web2"]["result"] == "failed"
    assert ret.data["minions"]["web1"]["result"] == "ok"
    assert case.current_of("web1") == case.tag
    # Seeder and tracker stop although a peer failed.
    assert ret.data["phases"]["stop"]["result"] is True
    assert not {"tracker", "seeder"} & lssd_env.running_roles()

    # The failed event carries the same reason, from the minion that failed.
    master = lssd_env.master.id
    failed = wait_until(
        lambda: event_listener.get_events([(master, f"lssd/peer/{case.tag}/failed")], after_time=since),
        30, "the failed event of web2",
    )
    (event,) = failed
    assert event.data["id"] == "web2"
    assert event.data["data"]["tag"] == case.tag
    assert event.data["data"]["reason"] in reason


def test_deploy_with_a_failing_seeder_aborts_the_registration_and_starts_no_peer(lssd_env, case):
    # The tracker's registration starts beside the seeder and waits for this run's torrent;
    # the seeder's build directory is missing, so none comes: the wait must end at once
    # naming the aborted run, not after job_timeout, and no peer may start.
    case.pillar(seeder_files_path=str(case.dir / "no-such-build"), job_timeout=300)
    started = time.monotonic()
    ret = deploy(lssd_env)
    assert ret.returncode != 0, ret.stdout
    assert ret.data["phases"]["seeder"]["result"] is False
    assert "no-such-build" in ret.data["phases"]["seeder"]["failed"]["seeder"]
    assert "aborted" in ret.data["phases"]["allow"]["failed"]["tracker"]
    assert ret.data["minions"] == {}
    for peer in PEERS:
        assert case.tags_in(peer) == []
    # Not a speed claim: the abort, not the 300 s wait, ended the run.
    assert time.monotonic() - started < 300
    assert ret.data["phases"]["stop"]["result"] is True
    assert not lssd_env.processes()


def test_required_key_missing_on_the_master_fails_before_any_job(lssd_env, case):
    # The minions keep the case's tag; the master's pillar has every key but the tag.
    case.top("base:\n  '*':\n    - lssd\n  'L@tracker,seeder or web*':\n    - match: compound\n    - case\n")
    ret = deploy(lssd_env)
    assert ret.returncode != 0
    assert "lssd:tag" in ret.data["error"] and lssd_env.master_id in ret.data["error"], ret.data
    assert not lssd_env.running_roles() & {"tracker", "seeder"}


def test_status_shows_each_peers_tag_after_a_tag_bump_and_grains_follow(lssd_env, case):
    first, second = case.tags(2)
    for tag in (first, second):
        ret = deploy(lssd_env, f"tag={tag}")
        assert ret.returncode == 0, ret.stdout
    status = lssd_env.salt_run.run("lssd.status", "tgt=web*")
    assert status.returncode == 0, status.stdout
    minions = status.data["minions"]
    assert sorted(minions) == sorted(PEERS)
    for peer in PEERS:
        # Other tests' tags may sit in their own directories on the same minion: read this
        # test's current symlink.
        assert minions[peer]["links"][str(case.destination(peer) / "current")] == second, minions[peer]
        assert {first, second} <= set(minions[peer]["tags"])
    assert "tracker" in status.data["swarms"]

    # salt -G 'lssd_current:<tag>' finds the peers holding the tag (grains refresh after a deploy).
    def targeted():
        found = lssd_env.salt.run("-G", "test.ping", minion_tgt=f"lssd_current:{second}")
        return sorted(found.data or {}) == sorted(PEERS) if isinstance(found.data, dict) else False

    wait_until(targeted, 60, f"salt -G lssd_current:{second} to match {PEERS}", interval=2)


def test_quiet_still_prints_an_error_that_stops_the_run(lssd_env, case):
    # --quiet hides the return data, where the error is; the error must still reach the operator.
    ret = lssd_env.salt_run.run("lssd.deploy", "tgt=web9*", "--quiet")
    assert ret.returncode == 1
    assert '"web9*" matches no minion' in ret.stderr, (ret.stdout, ret.stderr)
    assert not lssd_env.running_roles() & {"tracker", "seeder"}


def test_peers_a_failed_canary_kept_from_deploying_are_skipped_not_failed(lssd_env, case):
    # web1 is the canary and refuses its target (a directory that is not empty).
    target = case.destination("web1") / case.tag
    target.mkdir(parents=True)
    (target / "left-over").write_text("not ours\n")
    ret = lssd_env.salt_run.run("lssd.deploy", "canary=web1", "--out=nested", "--no-color")
    assert ret.returncode == 1, ret.stdout
    lines = ret.stdout.splitlines()
    # The live display's table (the return data follows it, in Salt's nested output).
    start = next(i for i, line in enumerate(lines) if line.startswith("minion  result"))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("web2 "))
    table = lines[start:end + 1]
    assert table[2].split()[:2] == ["web1", "failed"] and table[-1].split()[:2] == ["web2", "skipped"], table
    # The reason (a long path) wraps instead of running past the width of a terminal.
    assert len(table) > 4 and max(len(line) for line in table) <= 110, table
    (result,) = [line for line in lines if "s] result " in line]
    assert "FAILED on 1: web1: " in result and "1 skipped" in result, result
    assert case.tags_in("web2") == []

    report = lssd_env.salt_run.run("lssd.report", f"tag={case.tag}")
    assert report.data["skipped"] == ["web2"] and list(report.data["failed"]) == ["web1"], report.data
