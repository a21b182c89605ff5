"""The ``lssd`` states through Salt's loader (``state.single``), no daemons.

Each test builds what it needs on loopback: an *origin* minion runs the tracker and seeds,
*peer* minions deploy. Every functional minion has its own local mine, so peers name the
origin's .torrent with ``torrent=`` (the integration tests cover the mine). Every state is run
in test mode first (nothing may happen), then for real, then again (nothing may change).
"""

import os

import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest, without


@pytest.fixture
def build(tmp_path):
    return make_build_tree(tmp_path / "build", data_mb=1)


@pytest.fixture
def build2(tmp_path):
    """A second build: the same layout with different bytes."""
    return make_build_tree(tmp_path / "build2", data_mb=1, seed=b"second")


def seed(origin, tag, files_path, rebuild=False):
    """Seed ``tag`` from ``files_path`` on the origin through the state; return its torrent info."""
    ret = origin.states.lssd.seeding(name=tag, files_path=str(files_path), rebuild=rebuild)
    assert ret.result is True, ret.comment
    info = origin.modules.lssd.torrent_info(tag)
    origin.modules.lssd.tracker_allow(info["torrent"])
    return info


def running(minion):
    return [p for p in minion.modules.lssd.status()["processes"] if p["running"]]


def expected(build):
    return without(tree_manifest(build), EXCLUDED)


def test_tracker_running_and_stopped(make_minion, tracker_port):
    minion = make_minion("tracker")
    lssd = minion.states.lssd

    ret = lssd.tracker_running(name="tracker", port=tracker_port, bind="127.0.0.1", test=True)
    assert ret.result is None
    assert ret.changes["tracker"]["old"] is None
    assert running(minion) == []

    ret = lssd.tracker_running(name="tracker", port=tracker_port, bind="127.0.0.1")
    assert ret.result is True, ret.comment
    assert ret.changes["tracker"]["new"]["port"] == tracker_port
    first_pid = ret.changes["tracker"]["new"]["pid"]
    assert [p["role"] for p in running(minion)] == ["tracker"]

    ret = lssd.tracker_running(name="tracker", port=tracker_port, bind="127.0.0.1")
    assert ret.result is True and ret.changes == {}
    assert "already running" in ret.comment

    # Asked for another announce interval: restarted, in test mode only said.
    ret = lssd.tracker_running(name="tracker", port=tracker_port, bind="127.0.0.1", interval=7, test=True)
    assert ret.result is None and ret.changes["tracker"]["old"]["pid"] == first_pid
    ret = lssd.tracker_running(name="tracker", port=tracker_port, bind="127.0.0.1", interval=7)
    assert ret.result is True, ret.comment
    assert ret.changes["tracker"]["new"]["interval"] == 7
    assert ret.changes["tracker"]["new"]["pid"] != first_pid

    ret = lssd.tracker_stopped(name="tracker", test=True)
    assert ret.result is None and ret.changes["tracker"]["new"] is None
    assert [p["role"] for p in running(minion)] == ["tracker"]

    ret = lssd.tracker_stopped(name="tracker")
    assert ret.result is True and ret.changes["tracker"]["new"] is None
    assert running(minion) == []

    ret = lssd.tracker_stopped(name="tracker")
    assert ret.result is True and ret.changes == {}
    assert "already stopped" in ret.comment


def test_seeding_and_seeding_stopped(make_minion, build):
    minion = make_minion("seeder", seeder_files_path=str(build))
    lssd = minion.states.lssd

    ret = lssd.seeding(name="R1", test=True)
    assert ret.result is None
    assert set(ret.changes) == {"built", "seeding"}
    assert minion.modules.lssd.torrent_info("R1") is None
    assert running(minion) == []

    ret = lssd.seeding(name="R1")
    assert ret.result is True, ret.comment
    info = minion.modules.lssd.torrent_info("R1")
    assert ret.changes["built"] == {k: info[k] for k in ("infohash", "sha256", "size")}
    assert ret.changes["seeding"]["new"] is True
    assert info["seeding"] is True

    ret = lssd.seeding(name="R1")
    assert ret.result is True and ret.changes == {}
    assert lssd.seeding(name="R1", test=True).changes == {}

    ret = lssd.seeding_stopped(name="R1", test=True)
    assert ret.result is None and ret.changes == {"stopped": ["R1"]}
    assert minion.modules.lssd.torrent_info("R1")["seeding"] is True

    ret = lssd.seeding_stopped(name="R1")
    assert ret.result is True and ret.changes == {"stopped": ["R1"]}
    assert running(minion) == []
    ret = lssd.seeding_stopped(name="R1")
    assert ret.result is True and ret.changes == {}

    # Seeding again reuses the torrent made before: nothing is packed.
    ret = lssd.seeding(name="R1")
    assert ret.result is True, ret.comment
    assert "built" not in ret.changes and ret.changes["seeding"]["new"] is True
    assert minion.modules.lssd.torrent_info("R1")["infohash"] == info["infohash"]

    ret = lssd.seeding_stopped(name="all")
    assert ret.result is True and ret.changes == {"stopped": ["R1"]}
    assert running(minion) == []
    assert lssd.seeding_stopped(name="all").changes == {}


def test_deployed_test_mode_first_and_second_run(origin, make_minion, build, tmp_path):
    made = seed(origin, "R1", build)
    peer = make_minion("peer")
    dest = tmp_path / "opt" / "app"
    deploy = dict(name="R1", destination_path=str(dest), torrent=made["torrent"])

    ret = peer.states.lssd.deployed(test=True, **deploy)
    assert ret.result is None
    assert ret.comment == f"would download R1 ({made['size']} bytes) to {dest / 'R1'}"
    assert not (dest / "R1").exists()
    assert peer.modules.lssd.status()["processes"] == []

    ret = peer.states.lssd.deployed(**deploy)
    assert ret.result is True, ret.comment
    changes = ret.changes["deployed"]
    assert changes["target"] == str(dest / "R1")
    assert changes["bytes"] == made["size"] and changes["sha256"] == made["sha256"]
    # The seeder/peer split is the data plane's to get right (test_swarm); here: it is reported.
    for key in ("seconds", "rate", "from_seeder", "from_peers"):
        assert key in changes
    assert tree_manifest(dest / "R1") == expected(build)
    peer.modules.lssd.peer_stop()
    before = peer.modules.lssd.status()["processes"]

    # Installed and the same build published: nothing moves, no process starts.
    ret = peer.states.lssd.deployed(**deploy)
    assert ret.result is True and ret.changes == {}, ret.comment
    assert peer.states.lssd.deployed(test=True, **deploy).result is True
    assert peer.modules.lssd.status()["processes"] == before
    assert running(peer) == []

    # No seeder publishes R1 in the mine any more: the installed build stands.
    assert origin.states.lssd.seeding_stopped(name="R1").changes == {"stopped": ["R1"]}
    ret = peer.states.lssd.deployed(name="R1", destination_path=str(dest))
    assert ret.result is True and ret.changes == {}, ret.comment
    assert "installed build stands" in ret.comment
    assert running(peer) == []


def test_deployed_other_build_same_tag_needs_force(origin, make_minion, build, build2, tmp_path):
    first = seed(origin, "R1", build)
    peer = make_minion("peer")
    dest = tmp_path / "app"
    deploy = dict(name="R1", destination_path=str(dest), torrent=first["torrent"])
    assert peer.states.lssd.deployed(**deploy).result is True

    second = seed(origin, "R1", build2, rebuild=True)
    assert second["sha256"] != first["sha256"]

    ret = peer.states.lssd.deployed(**deploy)
    assert ret.result is False and ret.changes == {}
    assert first["sha256"] in ret.comment and second["sha256"] in ret.comment
    assert "force: True" in ret.comment
    assert tree_manifest(dest / "R1") == expected(build)

    ret = peer.states.lssd.deployed(force=True, test=True, **deploy)
    assert ret.result is None
    assert ret.changes["sha256"] == {"old": first["sha256"], "new": second["sha256"]}
    assert tree_manifest(dest / "R1") == expected(build)

    ret = peer.states.lssd.deployed(force=True, **deploy)
    assert ret.result is True, ret.comment
    assert ret.changes["sha256"] == {"old": first["sha256"], "new": second["sha256"]}
    assert ret.changes["deployed"]["sha256"] == second["sha256"]
    assert tree_manifest(dest / "R1") == expected(build2)
    assert peer.states.lssd.deployed(**deploy).changes == {}


def test_deployed_current_symlink_and_keep(origin, make_minion, build, build2, tmp_path):
    r1 = seed(origin, "R1", build)
    r2 = seed(origin, "R2", build2)
    peer = make_minion("peer")
    dest = tmp_path / "app"
    # What lssd did not install there must survive pruning.
    (dest / "shared").mkdir(parents=True)
    (dest / "shared" / "uploads.db").write_bytes(b"user data\n")
    (dest / "notes.txt").write_text("not a tag\n")
    (dest / "R0").mkdir()  # looks like a tag, but lssd never installed it

    ret = peer.states.lssd.deployed(
        name="R1", destination_path=str(dest), torrent=r1["torrent"], current=True
    )
    assert ret.result is True, ret.comment
    assert ret.changes["current"] == {"old": None, "new": "R1"}
    assert os.readlink(dest / "current") == "R1"

    r2_deploy = dict(name="R2", destination_path=str(dest), torrent=r2["torrent"], current=True, keep=1)
    ret = peer.states.lssd.deployed(test=True, **r2_deploy)
    assert ret.result is None
    assert ret.changes["current"] == {"old": "R1", "new": "R2"}
    assert ret.changes["removed"] == ["R1"]
    assert os.readlink(dest / "current") == "R1" and (dest / "R1").is_dir() and not (dest / "R2").exists()
    assert [p["tag"] for p in running(peer)] in ([], ["R1"])  # at most R1's lingering peer

    ret = peer.states.lssd.deployed(**r2_deploy)
    assert ret.result is True, ret.comment
    assert ret.changes["current"] == {"old": "R1", "new": "R2"}
    assert ret.changes["removed"] == ["R1"]
    assert os.readlink(dest / "current") == "R2"
    assert tree_manifest(dest / "current") == expected(build2)
    assert sorted(os.listdir(dest)) == ["R0", "R2", "current", "notes.txt", "shared"]
    assert (dest / "shared" / "uploads.db").read_bytes() == b"user data\n"
    assert list(peer.modules.lssd.installed()) == ["R2"]
    archives = os.listdir(os.path.join(peer.modules.lssd.status()["state_dir"], "downloads"))
    assert [a for a in archives if a.startswith("R1")] == []
    assert [a for a in archives if a.startswith("R2")] != []

    ret = peer.states.lssd.deployed(**r2_deploy)
    assert ret.result is True and ret.changes == {}, ret.comment


def test_deployed_refuses_bad_current(make_minion, tmp_path):
    # Both are refused before anything is looked up or downloaded.
    peer = make_minion("peer")
    dest = tmp_path / "app"
    (dest / "current").mkdir(parents=True)
    ret = peer.states.lssd.deployed(
        name="R1", destination_path=str(dest), torrent="/nonexistent", current=True
    )
    assert ret.result is False and ret.changes == {}
    assert str(dest / "current") in ret.comment and "not a symlink" in ret.comment

    ret = peer.states.lssd.deployed(
        name="R1", destination_path=str(dest), torrent="/nonexistent", current="live", no_tag_directory=True
    )
    assert ret.result is False and "no_tag_directory" in ret.comment
    assert sorted(os.listdir(dest)) == ["current"]
    assert peer.modules.lssd.status()["processes"] == []


def test_absent(origin, make_minion, build, build2, tmp_path):
    r1 = seed(origin, "R1", build)
    r2 = seed(origin, "R2", build2)
    peer = make_minion("peer")
    dest = tmp_path / "app"
    state_dir = peer.modules.lssd.status()["state_dir"]
    for made in (r1, r2):
        ret = peer.states.lssd.deployed(
            name=made["tag"], destination_path=str(dest), torrent=made["torrent"], current=made is r2
        )
        assert ret.result is True, ret.comment
    assert os.readlink(dest / "current") == "R2"

    # A tag no symlink points to.
    ret = peer.states.lssd.absent(name="R1", destination_path=str(dest), test=True)
    assert ret.result is None and ret.changes["removed"]["target"] == str(dest / "R1")
    assert (dest / "R1").is_dir()
    ret = peer.states.lssd.absent(name="R1")
    assert ret.result is True, ret.comment
    assert ret.changes["removed"]["target"] == str(dest / "R1") and ret.changes["removed"]["record"] is True
    assert ret.changes["removed"]["files"]
    assert not (dest / "R1").exists()
    assert not [a for a in os.listdir(os.path.join(state_dir, "downloads")) if a.startswith("R1")]
    assert peer.modules.lssd.installed("R1") is None
    ret = peer.states.lssd.absent(name="R1", destination_path=str(dest))
    assert ret.result is True and ret.changes == {}

    # The tag `current` points to: refused unless force, which removes the symlink too.
    ret = peer.states.lssd.absent(name="R2")
    assert ret.result is False and ret.changes == {}
    assert str(dest / "current") in ret.comment and "force: True" in ret.comment
    assert (dest / "R2").is_dir()
    ret = peer.states.lssd.absent(name="R2", force=True, test=True)
    assert ret.result is None and ret.changes["removed"]["links"] == [str(dest / "current")]
    assert os.path.islink(dest / "current")
    ret = peer.states.lssd.absent(name="R2", force=True)
    assert ret.result is True, ret.comment
    assert ret.changes["removed"]["links"] == [str(dest / "current")]
    assert os.listdir(dest) == []
    assert running(peer) == []
    assert peer.states.lssd.absent(name="R2", force=True).changes == {}


def test_two_apps_deploy_one_tag_side_by_side(origin, make_minion, build, build2, tmp_path):
    # Two minion configs over one state directory stand for one minion with two apps: the
    # state directory is all the lssd of a minion is.
    seeding = origin.modules.lssd.status()["state_dir"]
    made = {}
    for app, files in (("shop", build), ("blog", build2)):
        seeder_app = make_minion(f"origin-{app}", app=app, state_dir=seeding)
        ret = seeder_app.states.lssd.seeding(name="R1", files_path=str(files))
        assert ret.result is True, ret.comment
        made[app] = seeder_app.modules.lssd.torrent_info("R1")
        assert seeder_app.modules.lssd.tracker_allow(made[app]["torrent"])["app"] == app
    assert made["shop"]["torrent"] != made["blog"]["torrent"]
    assert made["shop"]["infohash"] != made["blog"]["infohash"]
    # The default namespace made no torrent of R1.
    assert origin.modules.lssd.torrent_info("R1") is None

    state_dir = str(tmp_path / "peer-state")
    peers = {app: make_minion(f"peer-{app}", app=app, state_dir=state_dir, run_id=f"run-{app}")
             for app in made}
    for app, peer in peers.items():
        dest = tmp_path / app
        ret = peer.states.lssd.deployed(name="R1", destination_path=str(dest), torrent=made[app]["torrent"])
        assert ret.result is True, ret.comment
        assert ret.changes["deployed"]["sha256"] == made[app]["sha256"]
    for app, files in (("shop", build), ("blog", build2)):
        record = peers[app].modules.lssd.installed("R1")
        assert record["target"] == str(tmp_path / app / "R1") and record["sha256"] == made[app]["sha256"]
        assert record["run_id"] == f"run-{app}" and record["app"] == app
        assert os.path.isfile(os.path.join(state_dir, "apps", app, "installed", "R1.json"))
        assert tree_manifest(tmp_path / app / "R1") == expected(files)
    assert not os.path.exists(os.path.join(state_dir, "installed"))
    # Each app's lingering peer runs from its own directory; status lists both.
    processes = peers["shop"].modules.lssd.status()["processes"]
    assert sorted((p["app"], p["tag"]) for p in processes if p["role"] == "peer") == [("blog", "R1"), ("shop", "R1")]
    # Again: each app finds its own record, nothing moves.
    for app, peer in peers.items():
        again = dict(name="R1", destination_path=str(tmp_path / app), torrent=made[app]["torrent"])
        ret = peer.states.lssd.deployed(**again)
        assert ret.result is True and ret.changes == {}, ret.comment
