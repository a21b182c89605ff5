"""A real swarm on loopback, driven through the ``lssd`` execution module.

Tracker, seeder and three peers are separate minions (own cachedirs) on this machine; the
peers download concurrently through our tracker and each ends with a byte-identical tree.
"""

import os
import threading

import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest
from salt.exceptions import CommandExecutionError

TAG = "Deploy1"


def run_parallel(calls):
    """Run each zero-argument callable in its own thread; return results or exceptions."""
    results = [None] * len(calls)

    def runner(index, call):
        try:
            results[index] = call()
        except Exception as exc:  # pylint: disable=broad-except
            results[index] = exc

    threads = [threading.Thread(target=runner, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


@pytest.fixture
def build(tmp_path):
    return make_build_tree(tmp_path / "build", data_mb=24)


@pytest.fixture
def swarm(make_minion, build, tracker_port):
    """A running tracker and a seeder seeding TAG; yields (tracker, seeder, create_torrent result)."""
    tracker = make_minion("tracker")
    seeder = make_minion("seeder", seeder_files_path=build)
    started = tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    assert started["changed"] is True
    made = seeder.modules.lssd.create_torrent(TAG)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(TAG)
    yield tracker, seeder, made
    seeder.modules.lssd.seed_stop()
    tracker.modules.lssd.tracker_stop()


def test_create_torrent_result(swarm):
    _, _, made = swarm
    for key in ("tag", "archive", "torrent", "infohash", "sha256", "size"):
        assert key in made
    assert made["tag"] == TAG
    assert os.path.isabs(made["archive"]) and os.path.isfile(made["archive"])
    assert os.path.isabs(made["torrent"]) and os.path.getsize(made["torrent"]) < 512 * 1024
    assert len(made["infohash"]) == 40 and len(made["sha256"]) == 64
    assert made["size"] == os.path.getsize(made["archive"])


def test_three_peers_get_identical_trees(swarm, make_minion, build, tmp_path):
    tracker, seeder, made = swarm
    expected = {k: v for k, v in tree_manifest(build).items() if k not in EXCLUDED}
    peers = [make_minion(f"peer{i}") for i in range(3)]
    dests = [tmp_path / f"dest{i}" for i in range(3)]
    results = run_parallel(
        [
            (lambda p=p, d=d: p.modules.lssd.peer(TAG, destination_path=str(d), torrent=made["torrent"], linger=2))
            for p, d in zip(peers, dests)
        ]
    )
    for result in results:
        assert not isinstance(result, Exception), result
    for dest, result in zip(dests, results):
        assert result["target"] == str(dest / TAG)
        assert tree_manifest(dest / TAG) == expected
        assert result["bytes"] == made["size"]
        assert result["from_seeder"] + result["from_peers"] >= made["size"] * 0.9
    status = tracker.modules.lssd.tracker_status()
    counts = status["torrents"][made["infohash"]]
    assert counts["completed"] == 3
    # Lingering peers exit by themselves after `linger` seconds.
    for peer in peers:
        peer.modules.lssd.peer_stop()
    assert all(
        p["running"] is False for peer in peers for p in peer.modules.lssd.status()["processes"]
    )
    # Each peer got its own slice of the pieces from the tracker: [rank, peers ranked so far].
    states = [
        p for peer in peers for p in peer.modules.lssd.status()["processes"] if p["role"] == "peer"
    ]
    slices = [state.get("slice") for state in states]
    assert len(slices) == 3 and None not in slices, states
    assert sorted(rank for rank, _ in slices) == [0, 1, 2], slices
    assert all(0 <= rank < count <= 3 for rank, count in slices), slices


def test_peer_times_out_and_cleans_up(make_minion, build, tmp_path, tracker_port):
    # A tracker and torrent but no seeder: the peer cannot complete.
    tracker = make_minion("tracker")
    seeder = make_minion("seeder", seeder_files_path=build)
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    made = seeder.modules.lssd.create_torrent(TAG)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    with pytest.raises(CommandExecutionError, match=r"did not complete within 3s"):
        peer.modules.lssd.peer(TAG, destination_path=str(dest), torrent=made["torrent"], timeout=3)
    assert not (dest / TAG).exists()
    assert [p for p in peer.modules.lssd.status()["processes"] if p["running"]] == []
    tracker.modules.lssd.tracker_stop()
