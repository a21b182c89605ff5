"""Deploys through ``salt-run state.orchestrate lssd.orch.deploy`` with a real master and minions.

The tests of this module build on one another as a fleet's history would: Deploy1 is shipped,
shipped again (nothing moves), a dry run of Deploy2 changes nothing, Deploy2 is shipped (current
switches, Deploy1 is kept), Deploy3 fails on a peer whose target is in the way while the other
peer gets it, the peers stop after linger, Deploy4 finds the tracker through the mine, and at
the end lssd.stop and lssd.peer_stop leave nothing running. Run them as a module.
"""

import os
import stat
import time

import pytest
from lssd_testutil import tree_manifest, without

from .lssd_integration import LINGER, PEERS, minion_states, orchestrate_states, wait_until

pytestmark = pytest.mark.integration


def running_roles(env):
    """The lssd roles still running below the package's directory, e.g. ``{'peer', 'tracker'}``."""
    return {cmdline.split("salt_lssd ", 1)[1].split()[0] for _, cmdline in env.processes()}


def tags_in(env, peer):
    destination = env.destination(peer)
    return sorted(n for n in os.listdir(destination) if n.startswith("Deploy")) if destination.exists() else []


def current_of(env, peer):
    return os.readlink(env.destination(peer) / "current")


def assert_installed(env, peer, tag, expected):
    target = env.destination(peer) / tag
    assert tree_manifest(target) == expected, f"{peer}: {target} differs from the build"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755


@pytest.fixture(scope="module")
def first_deploy(lssd_env):
    """Deploy1 shipped by the orchestrate: (result, states, the build's manifest at the time)."""
    expected = without(tree_manifest(lssd_env.build))
    ret = lssd_env.orchestrate()
    return ret, orchestrate_states(ret), expected


def test_entry_point_path_needs_no_sync(lssd_env):
    # The minions load lssd through the installed package's salt.loader entry point.
    extmods = lssd_env.minions["web1"].config["extension_modules"]
    assert not os.path.exists(os.path.join(extmods, "modules", "lssd.py"))
    status = lssd_env.call("web1", "lssd.status")
    assert status["state_dir"] == str(lssd_env.state_dir("web1"))


def test_deploy_gives_every_peer_the_build(lssd_env, first_deploy):
    ret, states, expected = first_deploy
    assert ret.returncode == 0, states
    assert all(state["result"] is True for state in states.values()), states
    peers = minion_states(states["lssd-peers"])
    assert sorted(peers) == list(PEERS)
    for peer in PEERS:
        (deployed,) = peers[peer].values()
        assert deployed["changes"]["deployed"]["bytes"] > 0
        assert_installed(lssd_env, peer, "Deploy1", expected)
        assert current_of(lssd_env, peer) == "Deploy1"
    # Seeder and tracker were stopped by the orchestrate; only lingering peers may remain.
    assert running_roles(lssd_env) <= {"peer"}


def test_deploy_is_visible_as_events(lssd_env, first_deploy, event_listener):
    # What `salt-run state.event 'lssd/*'` shows: progress while peers download, then a
    # summary per peer; the master wraps a minion's event as {"id": <minion>, "data": ...}.
    # (The listener only looks back as far as after_time.)
    master, since = lssd_env.master.id, time.time() - 3600
    completes = event_listener.get_events([(master, "lssd/peer/Deploy1/complete")], after_time=since)
    assert sorted(event.data["id"] for event in completes) == sorted(PEERS)
    for event in completes:
        assert event.data["data"]["bytes"] > 0 and event.data["data"]["seconds"] > 0
    progress = event_listener.get_events([(master, "lssd/peer/Deploy1/progress")], after_time=since)
    assert progress, "no progress event reached the master"
    for event in progress:
        assert event.data["id"] in PEERS
        assert {"progress", "download_rate", "upload_rate", "peers"} <= set(event.data["data"])


def test_same_tag_again_changes_nothing_on_the_peers(lssd_env, first_deploy):
    before = {peer: lssd_env.call(peer, "lssd.installed", "Deploy1") for peer in PEERS}
    ret = lssd_env.orchestrate()
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert states["lssd-peers"]["result"] is True
    assert minion_states(states["lssd-peers"]) == {}, "a peer changed although the tag did not"
    # No download ran: the install records are the very same.
    assert {peer: lssd_env.call(peer, "lssd.installed", "Deploy1") for peer in PEERS} == before


def test_dry_run_changes_nothing(lssd_env, first_deploy):
    ret = lssd_env.orchestrate(pillar={"lssd": {"tag": "Deploy2"}}, test=True)
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert all(state["result"] in (True, None) for state in states.values()), states
    for peer in PEERS:
        assert tags_in(lssd_env, peer) == ["Deploy1"]
        assert current_of(lssd_env, peer) == "Deploy1"
    assert lssd_env.call("seeder", "lssd.torrent_info", "Deploy2") is None
    assert "tracker" not in running_roles(lssd_env) and "seeder" not in running_roles(lssd_env)


def test_tag_bump_deploys_the_new_tag_and_switches_current(lssd_env, first_deploy):
    (lssd_env.build / "VERSION").write_text("2\n")
    expected = without(tree_manifest(lssd_env.build))
    ret = lssd_env.orchestrate(pillar={"lssd": {"tag": "Deploy2"}})
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    for peer in PEERS:
        assert_installed(lssd_env, peer, "Deploy2", expected)
        assert current_of(lssd_env, peer) == "Deploy2"
        assert tags_in(lssd_env, peer) == ["Deploy1", "Deploy2"]  # keep: 2


def test_failing_peer_is_named_and_the_others_complete(lssd_env, first_deploy):
    in_the_way = lssd_env.destination("web2") / "Deploy3"
    in_the_way.mkdir(parents=True)
    (in_the_way / "precious.txt").write_text("not ours\n")
    ret = lssd_env.orchestrate(pillar={"lssd": {"tag": "Deploy3"}})
    states = orchestrate_states(ret)
    assert ret.returncode != 0
    peers = states["lssd-peers"]
    assert peers["result"] is False
    assert "web2" in peers["comment"] and "web1" not in peers["comment"], peers["comment"]
    (web2,) = minion_states(peers)["web2"].values()
    assert web2["result"] is False and "not empty" in web2["comment"]
    # web1 completed: Deploy3 is current there, and keep: 2 removed Deploy1.
    assert current_of(lssd_env, "web1") == "Deploy3"
    assert tags_in(lssd_env, "web1") == ["Deploy2", "Deploy3"]
    # web2 kept what was in the way, and its current build.
    assert (in_the_way / "precious.txt").read_text() == "not ours\n"
    assert current_of(lssd_env, "web2") == "Deploy2"
    # Cleanup ran although a peer failed.
    assert states["lssd-stop"]["result"] is True
    assert "tracker" not in running_roles(lssd_env) and "seeder" not in running_roles(lssd_env)


def test_finished_peers_stop_by_themselves_after_linger(lssd_env, first_deploy):
    wait_until(lambda: not lssd_env.processes(), LINGER + 60, "the lingering peers to exit")


def test_tracker_address_from_the_mine(lssd_env, first_deploy):
    # No lssd:tracker:host: the seeder names the tracker by what the tracker minion published
    # to the mine. A tracker on 127.0.0.2 proves the address did not come from pillar.
    # The peers linger long this time, for test_stop_leaves_nothing_running.
    pillar = {"lssd": {"tag": "Deploy4", "linger": 600, "tracker": {"host": None, "bind": "127.0.0.2"}}}
    ret = lssd_env.orchestrate(pillar=pillar)
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    made = lssd_env.call("seeder", "lssd.torrent_info", "Deploy4")
    assert made["tracker"] == f"http://127.0.0.2:{lssd_env.tracker_port}/announce"
    for peer in PEERS:
        assert current_of(lssd_env, peer) == "Deploy4"


def test_site_dry_run(lssd_env, first_deploy):
    # lssd.orch.site: lssd.setup first (pip.installed libtorrent, pkg.installed pigz zstd),
    # then the deploy; a dry run so the test machine's packages are left alone.
    ret = lssd_env.orchestrate("lssd.orch.site", pillar={"lssd": {"tag": "Deploy5"}}, test=True)
    states = orchestrate_states(ret)
    assert ret.returncode == 0, states
    assert states["lssd-setup"]["__run_num__"] < states["lssd-tracker"]["__run_num__"]
    for minion, results in minion_states(states["lssd-setup"]).items():
        assert all(r["result"] is not False for r in results.values()), (minion, results)
    for peer in PEERS:
        assert "Deploy5" not in tags_in(lssd_env, peer)


def test_stop_leaves_nothing_running(lssd_env, first_deploy):
    # The orchestrate stopped seeder and tracker already: lssd.stop has nothing left to do.
    ret = lssd_env.salt.run("-C", "state.apply", "lssd.stop", minion_tgt="tracker or seeder")
    assert ret.returncode == 0, ret.stdout
    for results in ret.data.values():
        assert all(r["result"] is True and not r["changes"] for r in results.values()), results
    # Only the Deploy4 peers still linger; lssd.peer_stop ends them now.
    assert running_roles(lssd_env) == {"peer"}
    ret = lssd_env.salt.run("state.apply", "lssd.peer_stop", minion_tgt="web*")
    assert ret.returncode == 0, ret.stdout
    for results in ret.data.values():
        (result,) = results.values()
        assert result["result"] is True and result["changes"], result
    wait_until(lambda: not lssd_env.processes(), 30, "every lssd process to exit")
    ret = lssd_env.salt.run("state.apply", "lssd.peer_stop", minion_tgt="web*")
    for results in ret.data.values():
        assert all(r["result"] is True and not r["changes"] for r in results.values()), results


def test_create_torrent_sls_packs_once(lssd_env, first_deploy):
    pillar = {"lssd": {"tag": "Deploy6"}}
    ret = lssd_env.salt.run("state.apply", "lssd.create_torrent", pillar=pillar, minion_tgt="seeder")
    assert ret.returncode == 0, ret.stdout
    (result,) = ret.data.values()
    assert result["changes"]["lssd.create_torrent"]["tag"] == "Deploy6"
    ret = lssd_env.salt.run("state.apply", "lssd.create_torrent", pillar=pillar, minion_tgt="seeder")
    (result,) = ret.data.values()
    assert result["result"] is True and not result["changes"], result
    assert not lssd_env.processes()  # made, not seeded


def test_rm_tgz_removes_the_archive_only(lssd_env, first_deploy):
    ret = lssd_env.salt.run(
        "state.apply", "lssd.rm_tgz", pillar={"lssd": {"tag": "Deploy4"}}, minion_tgt="web1"
    )
    assert ret.returncode == 0, ret.stdout
    (result,) = ret.data.values()
    removed = result["changes"]["lssd.rm_tgz"]["removed"]
    assert any(path.endswith(".torrent") for path in removed) and len(removed) >= 2, removed
    for path in removed:
        assert path.startswith(str(lssd_env.state_dir("web1")) + os.sep) and not os.path.exists(path)
    assert (lssd_env.destination("web1") / "Deploy4").is_dir()
