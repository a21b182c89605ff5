"""Tree mode and delta deploys through the loader, over a real swarm on loopback.

The seeder hashes the build where it is and seeds it from there; peers download its files
straight beside the target. A peer that holds an earlier tag of the app places the files it
already has and downloads the rest; the summary says how many bytes of each.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest, without
from salt.exceptions import CommandExecutionError

from salt_lssd import bencode, mine, procs, tree
from salt_lssd import torrent as metainfo


@pytest.fixture
def build(tmp_path):
    root = make_build_tree(tmp_path / "build", data_mb=1)
    # Many small files too: one piece (and one pad file) each.
    for i in range(40):
        path = os.path.join(root, "src", f"m{i // 10}", f"f{i}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"# module %d\n" % i * (i + 1))
    return root


def seed(origin, tag, files_path, mode="tree"):
    made = origin.modules.lssd.create_torrent(tag, files_path=str(files_path), mode=mode)
    origin.modules.lssd.tracker_allow(made["torrent"])
    origin.modules.lssd.seed_start(tag)
    return made


def mtimes(root):
    """``{relpath: whole-second mtime}`` of everything below ``root`` (links themselves)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = int(os.lstat(path).st_mtime)
    return found


def test_tree_mode_installs_what_archive_mode_installs(origin, make_minion, build, tmp_path):
    archive = seed(origin, "A1", build, mode="archive")
    made = seed(origin, "T1", build)
    assert made["mode"] == "tree" and made["archive"] is None
    # The seeder seeds the build itself: nothing packed, only the manifest kept.
    assert made["root"] == str(build) and os.path.isfile(made["manifest"])
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    by_archive = peer.modules.lssd.peer("A1", destination_path=str(dest), torrent=archive["torrent"], linger=0)
    by_tree = peer.modules.lssd.peer("T1", destination_path=str(dest), torrent=made["torrent"], linger=2)

    assert by_archive["mode"] == "archive" and by_tree["mode"] == "tree"
    assert tree_manifest(dest / "T1") == tree_manifest(dest / "A1") == without(tree_manifest(build), EXCLUDED)
    assert mtimes(dest / "T1") == mtimes(dest / "A1")
    assert os.stat(dest / "T1").st_mode == os.stat(dest / "A1").st_mode
    assert by_tree["reused"] == 0 and by_tree["downloaded"] >= made["size"]
    assert by_tree["sha256"] == made["sha256"] and by_tree["bytes"] == made["size"]
    # Nothing is left beside the target, and the lingering seeder serves the installed tree.
    assert sorted(os.listdir(dest)) == ["A1", "T1"]
    states = {p["tag"]: p for p in peer.modules.lssd.status()["processes"] if p["role"] == "peer"}
    assert states["T1"]["status"] in ("lingering", "done"), states["T1"]
    peer.modules.lssd.peer_stop()
    # Deployed again: a no-op.
    again = peer.modules.lssd.peer("T1", destination_path=str(dest), torrent=made["torrent"], linger=0)
    assert again["changed"] is False


def _change(root, rel, data):
    path = os.path.join(root, rel)
    if os.path.exists(path):
        os.chmod(path, 0o644)
    with open(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def two_builds(build, tmp_path):
    """(build A, build B, B's changed files): B is A with three files changed and one added."""
    second = tmp_path / "build-b"
    shutil.copytree(build, second, symlinks=True)
    changed = {"src/m0/f3.py": b"changed\n", "lib/pkg/mod.py": b"def g():\n    pass\n" * 300,
               "src/new.py": b"new file\n" * 50}
    for rel, data in changed.items():
        _change(second, rel, data)
    with open(second / "data" / "blob.bin", "r+b") as fh:  # one byte of the 1 MiB blob
        fh.write(b"\xff")
    return build, second, dict(changed, **{"data/blob.bin": None})


def _wire_bounds(build_b, piece_size, manifest_size, changed):
    """(least, most) bytes the wire must bring for B's changed files and the manifest (0 when
    it came with the torrent): their sizes, and those rounded up to whole pieces (files are
    piece-aligned)."""
    sizes = [os.path.getsize(os.path.join(build_b, rel)) for rel in changed] + [manifest_size] * bool(manifest_size)
    return sum(sizes), sum(-(-size // piece_size) * piece_size for size in sizes)


def _file_bytes(root, rels):
    return sum(os.path.getsize(os.path.join(root, rel)) for rel in rels)


def _files(root, but=()):
    return [rel for rel, (kind, _, _) in without(tree_manifest(root), EXCLUDED).items()
            if kind == "file" and rel not in but]


@pytest.fixture(params=["in-torrent", "through-swarm"])
def r1_installed(request, origin, make_minion, two_builds, tmp_path, monkeypatch):
    """(peer, destination, R2's torrent record): R1 (build A) installed on the peer in tree
    mode, R2 (build B) seeded. R2's torrent carries its manifest, or (``through-swarm``: a
    mine entry with no room for it) the peer fetches the manifest through the swarm first."""
    build_a, build_b, _ = two_builds
    first = seed(origin, "R1", build_a)
    if request.param == "through-swarm":
        monkeypatch.setattr(mine, "fits", lambda data: False)
    second = seed(origin, "R2", build_b)
    assert second["manifest_in_torrent"] is (request.param == "in-torrent")
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    peer.modules.lssd.peer("R1", destination_path=str(dest), torrent=first["torrent"], linger=0)
    return peer, dest, second


def _manifest_on_the_wire(record):
    return 0 if record["manifest_in_torrent"] else os.path.getsize(record["manifest"])


def test_delta_deploy_downloads_only_what_changed(two_builds, r1_installed):
    _, build_b, changed = two_builds
    peer, dest, second = r1_installed
    summary = peer.modules.lssd.peer("R2", destination_path=str(dest), torrent=second["torrent"], linger=0)
    assert tree_manifest(dest / "R2") == without(tree_manifest(build_b), EXCLUDED)
    # Every unchanged file is placed from R1 (the changed ones hold nothing R1 has).
    assert summary["reused"] == _file_bytes(build_b, _files(build_b, but=changed)), summary
    least, most = _wire_bounds(build_b, second["piece_size"], _manifest_on_the_wire(second), changed)
    assert least <= summary["downloaded"] <= most, (least, summary["downloaded"], most)
    assert summary["downloaded"] == summary["from_seeder"] + summary["from_peers"]
    assert summary["downloaded"] < second["size"] / 2


def test_a_held_file_changed_on_the_peer_is_downloaded_not_reused(two_builds, r1_installed):
    _, build_b, changed = two_builds
    peer, dest, second = r1_installed
    # Same size, one byte different: only hashing tells.
    tampered = dest / "R1" / "data" / "text.log"
    data = bytearray(tampered.read_bytes())
    data[100] ^= 1
    _change(dest / "R1", "data/text.log", bytes(data))

    summary = peer.modules.lssd.peer("R2", destination_path=str(dest), torrent=second["torrent"], linger=0)
    assert tree_manifest(dest / "R2") == without(tree_manifest(build_b), EXCLUDED)
    unchanged = _files(build_b, but=set(changed) | {"data/text.log"})
    assert summary["reused"] == _file_bytes(build_b, unchanged), summary
    assert summary["downloaded"] >= len(data)


@pytest.mark.parametrize("r1_installed", ["in-torrent"], indirect=True)
def test_a_fifo_in_the_previous_tag_is_downloaded_never_opened(two_builds, r1_installed):
    # Anyone who can write the installed tree can put a FIFO where a held file was: opening it
    # to read would wait for a writer, and the deploy with it.
    _, build_b, changed = two_builds
    peer, dest, second = r1_installed
    fifo = dest / "R1" / "data" / "text.log"
    fifo.unlink()
    os.mkfifo(fifo)
    outcome = {}

    def deploy():
        try:
            outcome["summary"] = peer.modules.lssd.peer("R2", destination_path=str(dest), torrent=second["torrent"],
                                                        timeout=120, linger=0)
        except Exception as exc:  # pylint: disable=broad-except
            outcome["error"] = exc

    job = threading.Thread(target=deploy)
    job.start()
    job.join(180)
    if job.is_alive():  # release a reader stuck in open(), so the test fails instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        job.join(60)
        pytest.fail("the delta deploy blocked on the FIFO in the previous tag")
    assert "error" not in outcome, outcome
    summary = outcome["summary"]
    assert tree_manifest(dest / "R2") == without(tree_manifest(build_b), EXCLUDED)
    unchanged = _files(build_b, but=set(changed) | {"data/text.log"})
    assert summary["reused"] == _file_bytes(build_b, unchanged), summary
    assert summary["downloaded"] >= os.path.getsize(build_b / "data" / "text.log")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("r1_installed", ["in-torrent"], indirect=True)
def test_a_torrent_whose_manifest_leaves_the_tree_is_refused_and_leaves_nothing(origin, two_builds, r1_installed,
                                                                               tmp_path):
    # A torrent edited (or built wrongly) so that its manifest names a path outside the tree,
    # with the SHA-256 that goes with it: a delta peer refuses it while placing held files,
    # before anything is written outside the staging tree, and stops the download process
    # it had launched.
    peer, dest, second = r1_installed
    meta = bencode.decode(open(second["torrent"], "rb").read())
    manifest = json.loads(meta[b"lssd-manifest"])
    entry = next(e for e in manifest["entries"] if e["kind"] == "file" and e["size"])
    entry["path"] = "../../escaped.txt"
    meta[b"lssd-manifest"] = tree.manifest_bytes(manifest["root"], manifest["entries"])
    meta[b"lssd"][b"sha256"] = hashlib.sha256(meta[b"lssd-manifest"]).hexdigest().encode()
    edited = tmp_path / "edited.torrent"
    edited.write_bytes(bencode.encode(meta))
    # The deploy's certificate and key, where a torrent file taken from the seeder has them.
    shutil.copytree(os.path.splitext(second["torrent"])[0] + ".ssl", tmp_path / "edited.ssl")

    with pytest.raises(CommandExecutionError, match=r"manifest entry '\.\./\.\./escaped\.txt' is not a path inside"):
        peer.modules.lssd.peer("R2", destination_path=str(dest), torrent=str(edited), linger=0)
    assert sorted(os.listdir(dest)) == ["R1"]
    assert not (tmp_path / "escaped.txt").exists() and not (dest.parent / "escaped.txt").exists()
    assert [p for p in peer.modules.lssd.status()["processes"] if p["running"]] == []


def test_bad_mode_is_refused_naming_what_is_allowed(make_minion, build):
    seeder = make_minion("seeder", seeder_files_path=str(build))
    with pytest.raises(CommandExecutionError, match=r"mode 'zip' is not a deploy mode; allowed: archive .* or tree"):
        seeder.modules.lssd.create_torrent("R1", mode="zip", tracker="127.0.0.1:1")
    bad = make_minion("bad", seeder_files_path=str(build), mode="tar")
    with pytest.raises(CommandExecutionError, match=r"lssd:mode 'tar' is not a deploy mode; allowed"):
        bad.modules.lssd.create_torrent("R1", tracker="127.0.0.1:1")
    assert seeder.modules.lssd.torrent_info("R1") is None


def test_a_tree_torrent_too_big_for_the_mine_is_refused(make_minion, build, monkeypatch):
    # The real limit takes ~20,000 files to reach (see the README); a lower one shows the message.
    monkeypatch.setattr(mine, "MAX_TORRENT_TEXT", 2000)
    seeder = make_minion("seeder", seeder_files_path=str(build))
    with pytest.raises(CommandExecutionError) as failed:
        seeder.modules.lssd.create_torrent("R1", mode="tree", tracker="127.0.0.1:1")
    message = str(failed.value)
    entries = len(without(tree_manifest(build), EXCLUDED))
    assert f"({entries} files and directories)" in message
    assert "over the limit of 2000 bytes" in message and "mode 'archive'" in message
    assert seeder.modules.lssd.torrent_info("R1") is None


def test_a_tag_with_nothing_new_downloads_nothing(origin, make_minion, build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(build, copy, symlinks=True)
    first = seed(origin, "R1", build)
    second = seed(origin, "R2", copy)
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    peer.modules.lssd.peer("R1", destination_path=str(dest), torrent=first["torrent"], linger=0)
    summary = peer.modules.lssd.peer("R2", destination_path=str(dest), torrent=second["torrent"], linger=0)
    assert tree_manifest(dest / "R2") == tree_manifest(dest / "R1")
    assert summary["reused"] == second["size"] - os.path.getsize(second["manifest"])
    # The manifest came with the torrent: not a byte of the swarm's was needed.
    assert second["manifest_in_torrent"] and summary["downloaded"] == 0, summary


def test_a_failed_tree_download_leaves_nothing_behind(origin, make_minion, build, tmp_path):
    # Registered with the tracker, but nobody seeds it: the peer cannot complete.
    made = origin.modules.lssd.create_torrent("R1", files_path=str(build), mode="tree")
    origin.modules.lssd.tracker_allow(made["torrent"])
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    with pytest.raises(CommandExecutionError, match=r"did not complete within 3s"):
        peer.modules.lssd.peer("R1", destination_path=str(dest), torrent=made["torrent"], timeout=3)
    assert os.listdir(dest) == []
    assert [p for p in peer.modules.lssd.status()["processes"] if p["running"]] == []


def test_a_build_changed_while_seeded_stops_the_seeder(origin, make_minion, build, tmp_path):
    made = seed(origin, "R1", build)
    _change(build, "data/text.log", b"x" * os.path.getsize(os.path.join(build, "data/text.log")))
    peer = make_minion("peer")
    with pytest.raises(CommandExecutionError):
        peer.modules.lssd.peer("R1", destination_path=str(tmp_path / "dest"), torrent=made["torrent"], timeout=10)
    seeding = [p for p in origin.modules.lssd.status()["processes"] if p["role"] == "seeder"]
    assert [p["status"] for p in seeding] == ["failed"], seeding
    assert "changed since its torrent was made" in seeding[0]["error"]
    assert "data/text.log" in seeding[0]["error"]


def test_a_download_waiting_for_a_killed_job_ends_instead_of_lingering(build, tmp_path):
    # The job of a delta deploy starts the download process, then places the held files; if
    # the job is killed meanwhile (kill -9), the process must not wait out its timeout.
    built = tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)
    made = metainfo.make_tree_torrent("R1", built["files"], built["piece_size"], str(tmp_path / "R1.torrent"),
                                      "http://127.0.0.1:1/announce", lssd={"tag": "R1", "mode": "tree",
                                                                          "sha256": built["sha256"]})
    job = subprocess.Popen([sys.executable, "-c", "pass"])
    job.wait()  # a job that is gone
    run_dir = str(tmp_path / "run")
    config = {"torrent": made["torrent"], "save_path": str(tmp_path / "staging"), "tag": "R1",
              "infohash": made["infohash"], "listen": "127.0.0.1:0", "settings": {}, "linger": 0,
              "timeout": 600, "await_go": True, "job_pid": job.pid, "placed": []}
    procs.launch("peer", run_dir, config)
    deadline = time.monotonic() + 60
    while procs.state(run_dir)["running"] or procs.state(run_dir).get("status") in (None, "starting", "placing"):
        assert time.monotonic() < deadline, procs.state(run_dir)
        time.sleep(0.1)
    state = procs.state(run_dir)
    assert state["status"] == "failed", state
    assert f"(pid {job.pid}) ended before it placed the held files" in state["error"]
