"""Deploys through ``salt-run state.orchestrate lssd.orch.deploy`` with a real master and minions.

Every test stands alone (``-k`` runs any one of them): it deploys its own tags into its own
directories (the ``case`` fixture), and nothing it checks depends on an earlier test.
"""

import json
import os
import shutil
import stat
import time

import pytest
from lssd_testutil import tree_manifest, without

from .lssd_integration import LINGER, PEERS, minion_states, orchestrate_states, wait_until

pytestmark = pytest.mark.integration


def assert_installed(case, peer, tag, expected):
    target = case.destination(peer) / tag
    assert tree_manifest(target) == expected, f"{peer}: {target} differs from the build"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755


def assert_ok(ret):
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert all(state["result"] is True for state in states.values()), states
    return states


def test_entry_point_path_needs_no_sync(lssd_env):
    # The minions load lssd through the installed package's salt.loader entry point.
    extmods = lssd_env.minions["web1"].config["extension_modules"]
    assert not os.path.exists(os.path.join(extmods, "modules", "lssd.py"))
    status = lssd_env.call("web1", "lssd.status")
    assert status["state_dir"] == str(lssd_env.state_dir("web1"))


def test_per_minion_pillar_each_peer_installs_into_its_own_path(lssd_env, case, event_listener):
    # destination_path is templated per minion ({{ grains['id'] }}) and both peers share this
    # host: each must get its own directory, not the master's rendering of the pillar.
    since = time.time()
    expected = without(tree_manifest(lssd_env.build))
    ret = lssd_env.orchestrate()
    states = assert_ok(ret)
    peers = minion_states(states["lssd-peers"])
    assert sorted(peers) == list(PEERS)
    for peer in PEERS:
        (deployed,) = peers[peer].values()
        assert deployed["changes"]["deployed"]["bytes"] > 0
        assert deployed["changes"]["deployed"]["target"] == str(case.destination(peer) / case.tag)
        assert_installed(case, peer, case.tag, expected)
        assert case.current_of(peer) == case.tag
    # The master's own rendering of the pillar names a directory nobody installed into.
    assert not (case.dir / lssd_env.master_id).exists()
    # Seeder and tracker were stopped by the orchestrate; only lingering peers may remain.
    assert lssd_env.running_roles() <= {"peer"}

    # What `salt-run state.event 'lssd/*'` shows: progress while peers download, then a
    # summary per peer; the master wraps a minion's event as {"id": <minion>, "data": ...}.
    master = lssd_env.master.id
    completes = event_listener.get_events([(master, f"lssd/peer/{case.tag}/complete")], after_time=since)
    assert sorted(event.data["id"] for event in completes) == sorted(PEERS)
    for event in completes:
        assert event.data["data"]["bytes"] > 0 and event.data["data"]["seconds"] > 0
    # One run, one run id, in every peer's complete event and install record.
    (run_id,) = {event.data["data"]["run_id"] for event in completes}
    assert run_id and all(lssd_env.call(peer, "lssd.installed", case.tag)["run_id"] == run_id for peer in PEERS)
    progress = event_listener.get_events([(master, f"lssd/peer/{case.tag}/progress")], after_time=since)
    assert progress, "no progress event reached the master"
    for event in progress:
        assert event.data["id"] in PEERS
        assert {"progress", "download_rate", "upload_rate", "peers"} <= set(event.data["data"])

    # Finished peers keep seeding lssd:linger seconds, then exit by themselves.
    wait_until(lambda: not lssd_env.processes(), LINGER + 60, "the lingering peers to exit")


def test_an_app_deploys_in_its_own_namespace_end_to_end(lssd_env, case):
    # lssd:app reaches every role of the orchestrate, including its function steps: the
    # peers record the tag under the app, the default namespace holds nothing, and the stop
    # step stops the app's seeding (a seeder left running would show in processes()).
    case.pillar(app="shop")
    expected = without(tree_manifest(lssd_env.build))
    states = assert_ok(lssd_env.orchestrate())
    assert sorted(minion_states(states["lssd-peers"])) == list(PEERS)
    for peer in PEERS:
        assert_installed(case, peer, case.tag, expected)
        record = lssd_env.call(peer, "lssd.installed", case.tag, app="shop")
        assert record["app"] == "shop" and record["target"] == str(case.destination(peer) / case.tag)
        # Under the app's directory only (with lssd:app in pillar, app= defaults to it).
        records = lssd_env.state_dir(peer)
        assert (records / "apps" / "shop" / "installed" / f"{case.tag}.json").is_file()
        assert not (records / "installed" / f"{case.tag}.json").exists()
    assert lssd_env.call("seeder", "lssd.torrent_info", case.tag, app="shop")["seeding"] is False
    assert lssd_env.running_roles() <= {"peer"}
    wait_until(lambda: not lssd_env.processes(), LINGER + 60, "the lingering peers to exit")


def test_tree_mode_deploys_through_the_orchestrate_and_a_bump_moves_only_the_change(lssd_env, case):
    # lssd:mode tree end to end: the seeder's tree torrent travels (compressed) through the
    # real mine, each peer installs the build itself; the next tag, one file changed, reuses
    # the rest from the tag each peer holds.
    first, second = case.tags(2)
    build = case.dir / "build"
    shutil.copytree(lssd_env.build, build, symlinks=True)
    case.pillar(mode="tree", seeder_files_path=str(build))
    changed = build / "lib" / "pkg" / "mod.py"
    states = assert_ok(lssd_env.orchestrate(pillar={"lssd": {"tag": first}}))
    expected = without(tree_manifest(build))
    for peer, results in minion_states(states["lssd-peers"]).items():
        (deployed,) = results.values()
        assert deployed["changes"]["deployed"]["mode"] == "tree", deployed
        assert_installed(case, peer, first, expected)
    changed.write_bytes(b"def f(x):\n    return x * 3\n" * 200)
    states = assert_ok(lssd_env.orchestrate(pillar={"lssd": {"tag": second}}))
    expected = without(tree_manifest(build))
    for peer, results in minion_states(states["lssd-peers"]).items():
        (deployed,) = results.values()
        summary = deployed["changes"]["deployed"]
        assert summary["reused"] > 0 and summary["downloaded"] < summary["reused"], summary
        assert_installed(case, peer, second, expected)
    wait_until(lambda: not lssd_env.processes(), LINGER + 60, "the lingering peers to exit")


def test_same_tag_again_changes_nothing_and_hooks_run_on_change_only(lssd_env, case):
    # lssd:hooks:sls: the operator's SLS runs after a deploy that changed the peer, only then.
    case.pillar(hooks={"sls": ["lssd_test.hook"]})
    ret = lssd_env.orchestrate()
    states = assert_ok(ret)
    for peer, results in minion_states(states["lssd-peers"]).items():
        hook = next(r for key, r in results.items() if "lssd-test-hook" in key)
        assert hook["result"] is True and hook["changes"], (peer, hook)
    for peer in PEERS:
        assert (case.dir / peer / "hooks.log").read_text() == f"{case.tag}\n"
    before = {peer: lssd_env.call(peer, "lssd.installed", case.tag) for peer in PEERS}

    ret = lssd_env.orchestrate()
    states = assert_ok(ret)
    assert minion_states(states["lssd-peers"]) == {}, "a peer changed although the tag did not"
    # No download ran: the install records are the very same; and the hook did not run.
    assert {peer: lssd_env.call(peer, "lssd.installed", case.tag) for peer in PEERS} == before
    for peer in PEERS:
        assert (case.dir / peer / "hooks.log").read_text() == f"{case.tag}\n"


def test_dry_run_changes_nothing(lssd_env, case):
    ret = lssd_env.orchestrate(test=True)
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert all(state["result"] in (True, None) for state in states.values()), states
    for peer in PEERS:
        assert case.tags_in(peer) == []
    assert lssd_env.call("seeder", "lssd.torrent_info", case.tag) is None
    assert not {"tracker", "seeder"} & lssd_env.running_roles()


def test_failing_peer_is_named_and_the_others_complete(lssd_env, case):
    in_the_way = case.destination("web2") / case.tag
    in_the_way.mkdir(parents=True)
    (in_the_way / "precious.txt").write_text("not ours\n")
    ret = lssd_env.orchestrate()
    states = orchestrate_states(ret)
    assert ret.returncode != 0
    peers = states["lssd-peers"]
    assert peers["result"] is False
    assert "web2" in peers["comment"] and "web1" not in peers["comment"].split("\n")[0], peers["comment"]
    (web2,) = minion_states(peers)["web2"].values()
    assert web2["result"] is False and "not empty" in web2["comment"], web2
    assert case.current_of("web1") == case.tag
    # web2 kept what was in the way.
    assert (in_the_way / "precious.txt").read_text() == "not ours\n"
    assert not (case.destination("web2") / "current").exists()
    # Cleanup ran although a peer failed.
    assert states["lssd-stop-seeding"]["result"] is True and states["lssd-stop-tracker"]["result"] is True
    assert not {"tracker", "seeder"} & lssd_env.running_roles()


def test_tracker_address_from_the_mine(lssd_env, case):
    # No lssd:tracker:host anywhere: the seeder names the tracker by what the tracker minion
    # published to the mine. A tracker on 127.0.0.2 proves the address did not come from pillar.
    case.pillar(tracker={"host": None, "bind": "127.0.0.2"})
    ret = lssd_env.orchestrate()
    assert_ok(ret)
    made = lssd_env.call("seeder", "lssd.torrent_info", case.tag)
    # (The announce URL may carry a query, such as the swarm's passkey.)
    assert made["tracker"].split("?")[0] == f"http://127.0.0.2:{lssd_env.tracker_port}/announce"
    for peer in PEERS:
        assert case.current_of(peer) == case.tag


def test_site_dry_run(lssd_env, case):
    # lssd.orch.site: lssd.setup first (pip.installed libtorrent, pkg.installed pigz zstd),
    # then the deploy; a dry run so the test machine's packages are left alone.
    ret = lssd_env.orchestrate("lssd.orch.site", test=True)
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    # Every deploy step requires lssd-run, which lssd-setup holds back until it is done.
    assert states["lssd-setup"]["__run_num__"] < states["lssd-run"]["__run_num__"]
    for minion, results in minion_states(states["lssd-setup"]).items():
        assert all(r["result"] is not False for r in results.values()), (minion, results)
    for peer in PEERS:
        assert case.tags_in(peer) == []


def test_stop_peer_stop_and_rm_tgz(lssd_env, case):
    # The peers linger long this time, so lssd.peer_stop has something to stop.
    case.pillar(linger=600)
    assert_ok(lssd_env.orchestrate())
    # The orchestrate stopped seeder and tracker already: lssd.stop has nothing left to do.
    ret = lssd_env.salt.run("-C", "state.apply", "lssd.stop", minion_tgt="tracker or seeder")
    assert ret.returncode == 0, ret.stdout
    for results in ret.data.values():
        assert all(r["result"] is True and not r["changes"] for r in results.values()), results
    assert lssd_env.running_roles() == {"peer"}
    ret = lssd_env.salt.run("state.apply", "lssd.peer_stop", minion_tgt="web*")
    assert ret.returncode == 0, ret.stdout
    for results in ret.data.values():
        (result,) = results.values()
        assert result["result"] is True and result["changes"], result
    wait_until(lambda: not lssd_env.processes(), 30, "every lssd process to exit")
    ret = lssd_env.salt.run("state.apply", "lssd.peer_stop", minion_tgt="web*")
    for results in ret.data.values():
        assert all(r["result"] is True and not r["changes"] for r in results.values()), results

    # rm_tgz: the archive and torrent go, the installed tree stays; a second run changes nothing.
    downloads = [
        p
        for p in lssd_env.state_dir("web1").rglob("*")
        if p.is_file() and case.tag in p.name and p.parent.name in ("downloads", "torrents")
    ]
    assert downloads, "the peer kept no archive or torrent of the tag"
    ret = lssd_env.salt.run("state.apply", "lssd.rm_tgz", minion_tgt="web1")
    assert ret.returncode == 0, ret.stdout
    (result,) = ret.data.values()
    assert result["result"] is True and result["changes"], result
    assert not [p for p in downloads if p.exists()]
    assert (case.destination("web1") / case.tag).is_dir()
    ret = lssd_env.salt.run("state.apply", "lssd.rm_tgz", minion_tgt="web1")
    (result,) = ret.data.values()
    assert result["result"] is True and not result["changes"], result


def test_stop_stops_only_the_tag_of_its_run(lssd_env, case):
    # Two runs seed from one seeder; the orchestrate's stop step of one (its run pillar names
    # the tag) must leave the other seeding.
    first, second = case.tags(2)

    def apply(sls, target, tag):
        ret = lssd_env.salt.run("-C", "state.apply", sls, "pillar=" + json.dumps({"lssd": {"tag": tag}}),
                                minion_tgt=target)
        assert ret.returncode == 0, ret.stdout
        return ret.data

    try:
        apply("lssd.tracker", "tracker", first)
        for tag in (first, second):
            apply("lssd.seeder", "seeder", tag)
        assert all(lssd_env.call("seeder", "lssd.torrent_info", tag)["seeding"] for tag in (first, second))

        stopped = apply("lssd.stop", "tracker or seeder", first)
        (seeding,) = [r for key, r in stopped["seeder"].items() if "lssd-seeding-stopped" in key]
        assert seeding["result"] is True and seeding["changes"] == {"stopped": [first]}, seeding
        assert lssd_env.call("seeder", "lssd.torrent_info", first)["seeding"] is False
        assert lssd_env.call("seeder", "lssd.torrent_info", second)["seeding"] is True
        # The tracker stops whatever the tag.
        (tracker,) = [r for key, r in stopped["tracker"].items() if "lssd-tracker-stopped" in key]
        assert tracker["result"] is True and tracker["changes"], tracker
        assert lssd_env.call("tracker", "lssd.tracker_status")["running"] is False
        # The second run's entry is still in the mine for its peers.
        assert lssd_env.call("web1", "lssd.lookup", second)["published"] is True
    finally:
        lssd_env.salt.run("lssd.seed_stop", second, minion_tgt="seeder")
        lssd_env.salt.run("lssd.tracker_stop", minion_tgt="tracker")
    assert not lssd_env.processes()


def test_create_torrent_sls_packs_once(lssd_env, case):
    ret = lssd_env.salt.run("state.apply", "lssd.create_torrent", minion_tgt="seeder")
    assert ret.returncode == 0, ret.stdout
    (result,) = ret.data.values()
    assert result["result"] is True and result["changes"], result
    assert lssd_env.call("seeder", "lssd.torrent_info", case.tag)["tag"] == case.tag
    ret = lssd_env.salt.run("state.apply", "lssd.create_torrent", minion_tgt="seeder")
    (result,) = ret.data.values()
    assert result["result"] is True and not result["changes"], result
    assert not lssd_env.processes()  # made, not seeded

