"""``salt-run lssd.report`` after runner and orchestrate deploys: the table alone for people,
data that parses for programs, one row per peer from the master's job cache."""

import json

import pytest

from .lssd_integration import PEERS

pytestmark = pytest.mark.integration


def report_for_people(env, *args):
    """``salt-run lssd.report`` as an operator runs it (Salt's default outputter)."""
    ret = env.salt_run.run("lssd.report", *args, "--out=nested", "--no-color")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret.stdout.rstrip("\n").splitlines()


def assert_only_the_table(lines, tag, peers):
    assert lines[0].split()[:3] == ["minion", "result", "bytes"], lines
    assert set(lines[1]) <= {"-", " "}, lines
    rows = lines[2:2 + len(peers)]
    assert [row.split()[:2] for row in rows] == [[peer, "ok"] for peer in peers], lines
    # Then one blank line and the summary; nothing of Salt's own output before or after.
    assert lines[2 + len(peers):] == ["", lines[-1]] and lines[-1].startswith(f"{tag} (run "), lines
    assert lines[-1].endswith(f"{len(peers)} peers, every one deployed"), lines


def assert_json_report(env, args, tag, jids=None):
    ret = env.salt_run.run("lssd.report", *args)
    assert ret.returncode == 0, ret.stdout
    data = json.loads(ret.stdout)  # the whole output is one JSON document
    assert data["tag"] == tag and data["failed"] == {} and data["result"] is True, data
    assert {m: r["result"] for m, r in data["minions"].items()} == {p: "ok" for p in PEERS}
    assert all(data["minions"][p]["bytes"] > 0 for p in PEERS)
    if jids is not None:
        assert set(jids) <= set(data["jids"])
    return data


def test_report_of_a_runner_deploy_is_the_table_alone_and_parses_as_json(lssd_env, case):
    deployed = lssd_env.salt_run.run("lssd.deploy")
    assert deployed.returncode == 0, deployed.stdout
    data = assert_json_report(lssd_env, [f"tag={case.tag}"], case.tag, deployed.data["jids"]["peers"])
    assert data["run_id"] == deployed.data["run_id"]
    assert_only_the_table(report_for_people(lssd_env, f"tag={case.tag}"), case.tag, PEERS)
    # By the runner's jid, and by a peer job's: the same run.
    runner_jid = newest_job(lssd_env, "runner.lssd.deploy")
    assert assert_json_report(lssd_env, [f"jid={runner_jid}"], case.tag)["run_id"] == data["run_id"]
    peer_jid = deployed.data["jids"]["peers"][0]
    assert assert_json_report(lssd_env, [f"jid={peer_jid}"], case.tag)["run_id"] == data["run_id"]


def test_report_of_an_orchestrate_deploy_is_the_table_alone_and_parses_as_json(lssd_env, case):
    ret = lssd_env.orchestrate()
    assert ret.returncode == 0, ret.stdout
    data = assert_json_report(lssd_env, [f"tag={case.tag}"], case.tag)
    assert_only_the_table(report_for_people(lssd_env, f"tag={case.tag}"), case.tag, PEERS)
    orchestrate_jid = newest_job(lssd_env, "runner.state.orchestrate")
    assert assert_json_report(lssd_env, [f"jid={orchestrate_jid}"], case.tag)["run_id"] == data["run_id"]


def newest_job(env, function):
    ret = env.salt_run.run("jobs.list_jobs", f"search_function={function}")
    assert ret.returncode == 0 and ret.data, ret.stdout
    return max(ret.data)
