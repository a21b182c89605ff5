"""Fault injection: real processes, real libtorrent on loopback, and a fault in the middle.

Each case asserts the outcome and the message the operator reads: a corrupt seeder, a killed
download process (and the retry that resumes it), a full state directory or destination, a
decompression bomb, a planted pidfile, umask 000, an unreachable tracker, a seeder killed
after one full copy and one killed before any, two tags at once. Waits poll with deadlines sized for a loaded 2-core
machine; none is a fixed sleep.
"""

import os
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time

import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest
from salt.exceptions import CommandExecutionError
from salt_lssd import common, procs
from salt_lssd import torrent as metainfo

from loaderutil import free_port

TAG = "Fault1"
# Handing a file to another user (uid 65534) is what these checks are about; only root can.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user (uid 65534)")

# Seeder settings that make a download last seconds on loopback, so a fault can land in it
# (libtorrent exempts local peers from rate limits unless told otherwise).
SLOW_SEEDER = {"upload_rate_limit": 1_000_000, "ignore_limits_on_local_network": False}


def wait_for(check, timeout, what):
    """Poll ``check()`` until it returns something true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout}s")


class Background:
    """Run ``call`` in a thread; ``result()`` returns its value or raises its exception."""

    def __init__(self, call):
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()

    def _run(self, call):
        try:
            self.value = call()
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc

    def result(self, timeout=300):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.value


def built(build):
    """The tree a peer should end with for ``build`` (what packing keeps)."""
    return {k: v for k, v in tree_manifest(build).items() if k not in EXCLUDED}


def state_dir(minion):
    return minion.opts["lssd"].get("state_dir") or os.path.join(minion.opts["cachedir"], "lssd")


def run_dir(minion, role, tag=TAG):
    return os.path.join(state_dir(minion), "run", f"{role}-{tag}")


def role_state(minion, role, tag=TAG):
    return procs.state(run_dir(minion, role, tag))


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(name, size) -> a directory on a fresh tmpfs of ``size`` (unmounted afterwards)."""
    mounted = []

    def mount(name, size):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True, check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"needs root with CAP_SYS_ADMIN to mount a {size} tmpfs (a container needs "
                        f"--cap-add SYS_ADMIN); mount said: {done.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def make_minion(make_minion):
    """Minions with plain torrents: these deploys pass torrent= paths, which carry no SSL
    certificate, and the faults are the same either way."""
    return lambda name, **lssd: make_minion(name, **dict({"ssl": False}, **lssd))


@pytest.fixture
def tracker(make_minion, tracker_port):
    minion = make_minion("tracker")
    minion.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    yield minion
    minion.modules.lssd.tracker_stop()


def start_seeder(make_minion, tracker, build, tag=TAG, **lssd):
    seeder = make_minion("seeder", seeder_files_path=str(build), **lssd)
    made = seeder.modules.lssd.create_torrent(tag)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(tag)
    return seeder, made


def deploy(peer, made, dest, tag=TAG, **kwargs):
    kwargs.setdefault("linger", 0)
    return peer.modules.lssd.peer(tag, destination_path=str(dest), torrent=made["torrent"], **kwargs)


def flip_bytes(path, offset, keep_mtime=False):
    """Invert 16 bytes of ``path`` at ``offset`` in place; with ``keep_mtime`` put the
    mtime back (silent corruption: size, mtime and inode all unchanged)."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(16)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_corrupt_seeder_fails_the_peer_fast_and_the_seeder_stops(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=4)
    seeder, made = start_seeder(make_minion, tracker, build)
    # A first peer makes the seeder read (and check) every piece once.
    deploy(make_minion("first"), made, tmp_path / "first")
    # Bit rot the seeder cannot see from the file's size, mtime or inode.
    flip_bytes(made["archive"], made["size"] // 2, keep_mtime=True)
    peer = make_minion("peer")
    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as err:
        deploy(peer, made, tmp_path / "dest", timeout=600)
    assert time.monotonic() - started < 60, "a corrupt source must not cost the whole timeout"
    assert "corrupt data from 127.0.0.1:" in str(err.value), err.value
    assert "removed" in str(err.value)
    assert not (tmp_path / "dest" / TAG).exists()
    assert os.listdir(os.path.join(state_dir(peer), "downloads")) == []
    # A change the seeder can see: it stops, naming its archive.
    flip_bytes(made["archive"], 0)
    failed = wait_for(lambda: role_state(seeder, "seeder").get("status") == "failed" and role_state(seeder, "seeder"),
                      30, "the seeder noticing its archive changed")
    assert made["archive"] in failed["error"] and "changed on disk" in failed["error"], failed
    assert failed["archive_changed"] is True


def test_seeder_refuses_to_serve_a_piece_that_rotted_and_the_peer_learns_fast(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=4)
    seeder, made = start_seeder(make_minion, tracker, build)
    # Rotted before any peer asked: the seeder checks each piece on its first request.
    flip_bytes(made["archive"], made["size"] // 2, keep_mtime=True)
    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as err:
        deploy(make_minion("peer"), made, tmp_path / "dest", timeout=600)
    assert time.monotonic() - started < 90, "a seeder gone must not cost the whole timeout"
    assert "no source left at" in str(err.value), err.value
    failed = role_state(seeder, "seeder")
    assert failed["status"] == "failed" and failed["archive_changed"] is True, failed
    assert f"archive {made['archive']} is corrupt: piece" in failed["error"], failed


def test_killed_download_says_so_and_the_retry_resumes(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=8)
    _, made = start_seeder(make_minion, tracker, build, libtorrent_settings=SLOW_SEEDER)
    peer = make_minion("peer")
    job = Background(lambda: deploy(peer, made, tmp_path / "dest", timeout=600))
    wait_for(lambda: (role_state(peer, "peer").get("total_done") or 0) > 1_000_000, 120, "a partial download")
    pid = procs.pid_of(run_dir(peer, "peer"))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(CommandExecutionError) as err:
        job.result()
    assert "killed by SIGKILL (no final report)" in str(err.value), err.value
    assert "a retry resumes it" in str(err.value)
    result = deploy(peer, made, tmp_path / "dest", timeout=600)
    assert result["reused"] > 1_000_000, result
    assert tree_manifest(tmp_path / "dest" / TAG) == built(build)


def test_partial_download_is_removed_by_rm_tgz(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=8)
    _, made = start_seeder(make_minion, tracker, build, libtorrent_settings=SLOW_SEEDER)
    peer = make_minion("peer")
    job = Background(lambda: deploy(peer, made, tmp_path / "dest", timeout=600))
    wait_for(lambda: (role_state(peer, "peer").get("total_done") or 0) > 500_000, 120, "a partial download")
    peer.modules.lssd.peer_stop(TAG)
    with pytest.raises(CommandExecutionError, match=r"ended as 'stopped' before it completed"):
        job.result()
    partial = os.path.join(state_dir(peer), "downloads", os.path.basename(made["archive"]))
    assert os.path.isfile(partial)
    assert partial in peer.modules.lssd.rm_tgz(TAG)["removed"]
    assert os.listdir(os.path.join(state_dir(peer), "downloads")) == []


def test_state_dir_too_small_is_refused_before_downloading(make_minion, tracker, tmpfs, tmp_path):
    small = tmpfs("state", "2m")
    build = make_build_tree(tmp_path / "build", data_mb=4)
    _, made = start_seeder(make_minion, tracker, build)
    peer = make_minion("peer", state_dir=str(small))
    with pytest.raises(CommandExecutionError) as err:
        deploy(peer, made, tmp_path / "dest")
    message = str(err.value)
    assert "no space left" in message and os.path.join(str(small), "downloads") in message, message
    assert f"{made['size']} more are needed" in message
    assert not (tmp_path / "dest").exists()


def fill(directory):
    """Write a file into ``directory`` until its file system is full."""
    with open(os.path.join(directory, "filler"), "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass


def test_state_dir_filling_up_mid_download_says_no_space(make_minion, tracker, tmpfs, tmp_path):
    roomy = tmpfs("state", "24m")
    build = make_build_tree(tmp_path / "build", data_mb=8)
    _, made = start_seeder(make_minion, tracker, build, libtorrent_settings=SLOW_SEEDER)
    peer = make_minion("peer", state_dir=str(roomy))
    job = Background(lambda: deploy(peer, made, tmp_path / "dest", timeout=600))
    wait_for(lambda: (role_state(peer, "peer").get("total_done") or 0) > 500_000, 120, "a partial download")
    fill(roomy)
    with pytest.raises(CommandExecutionError) as err:
        job.result()
    message = str(err.value)
    assert "no space left" in message and str(roomy) in message, message
    assert not (tmp_path / "dest" / TAG).exists()


def test_state_json_on_a_full_disk_still_says_why(tmpfs):
    """A role whose state.json cannot be written any more leaves its last words in the space
    it set aside at start, and the waiting side reads them."""
    full = tmpfs("state", "1m")
    where = common.ensure_dir(os.path.join(full, "run", "peer-T1"))
    # A role's side in a process of its own (the reporter takes over signals and the umask).
    script = (
        "import sys\n"
        "from salt_lssd import LssdError, procs\n"
        "reporter = procs.Reporter(sys.argv[1])\n"
        "with open(sys.argv[2], 'wb') as fh:\n"
        "    try:\n"
        "        while True:\n"
        "            fh.write(bytes(1 << 16)); fh.flush()\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    reporter.report(status='downloading', progress=50.0, detail='x' * 8192)\n"
        "except LssdError as exc:\n"
        "    reporter.report(status='failed', error=str(exc))\n"
        "    sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, where, os.path.join(full, "filler")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    last = procs.state(where)
    assert last["status"] == "failed", last
    assert f"cannot write {where}/state.json: no space left on device" in last["error"], last


@pytest.mark.parametrize("recorded", [True, False], ids=["size-recorded", "older-torrent"])
def test_destination_full_leaves_nothing_behind(make_minion, tracker, tmpfs, tmp_path, recorded):
    dest = tmpfs("dest", "2m")
    build = make_build_tree(tmp_path / "build", data_mb=3)
    if recorded:
        _, made = start_seeder(make_minion, tracker, build)
    else:
        made = seed_crafted(make_minion, tracker, tmp_path, tar_of(build, tmp_path / "a.tar"), "none")
    with pytest.raises(CommandExecutionError) as err:
        deploy(make_minion("peer"), made, dest)
    message = str(err.value)
    assert "no space left to install" in message and str(dest) in message, message
    assert os.listdir(dest) == [], "no target and no temporary directory may be left"


def tar_of(build, path):
    with tarfile.open(path, "w") as tar:
        tar.add(build, arcname=".")
    return path


def seed_crafted(make_minion, tracker, tmp_path, archive_path, compression, **lssd_meta):
    """Seed an archive made here (not by create_torrent), with a torrent as an older lssd made
    it: no unpacked size unless given in ``lssd_meta``."""
    seeder = make_minion("seeder")
    layout = common.Layout(state_dir(seeder))
    suffix = {"none": ".tar", "zstd": ".tar.zst"}[compression]
    archive = os.path.join(common.ensure_dir(layout.archives), TAG + suffix)
    os.replace(archive_path, archive)
    sha256 = common.sha256_file(archive)
    meta = dict(tag=TAG, sha256=sha256, compression=compression, path_is_file=0, **lssd_meta)
    made = metainfo.make_torrent(archive, layout.torrent(TAG), metainfo.announce_url("127.0.0.1", tracker_port_of(tracker)),
                                 lssd=meta)
    made.update(archive=archive, sha256=sha256, tag=TAG)
    common.write_json_atomic(layout.torrent_meta(TAG), made)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(TAG)
    return made


def tracker_port_of(tracker):
    return tracker.opts["lssd"]["tracker"]["port"]


def zstd_bomb(path, size):
    """A .tar.zst holding one file of ``size`` zero bytes (a few KiB on disk)."""
    with open(path, "wb") as out:
        zstd = subprocess.Popen(["zstd", "-q", "-c", "-3"], stdin=subprocess.PIPE, stdout=out)
        with tarfile.open(fileobj=zstd.stdin, mode="w|") as tar:
            info = tarfile.TarInfo("zeros")
            info.size = size
            tar.addfile(info, _Zeros(size))
        zstd.stdin.close()
        assert zstd.wait() == 0
    return path


class _Zeros:
    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\0" * n


@pytest.mark.parametrize("recorded", [4096, None], ids=["size-recorded", "older-torrent"])
def test_zstd_bomb_is_refused_with_nothing_left(make_minion, tracker, tmp_path, recorded):
    bomb = zstd_bomb(tmp_path / "bomb.tar.zst", 256 << 20)
    assert os.path.getsize(bomb) < 64 << 10
    extra = {"unpacked_size": recorded} if recorded else {}
    made = seed_crafted(make_minion, tracker, tmp_path, bomb, "zstd", **extra)
    dest = tmp_path / "dest"
    with pytest.raises(CommandExecutionError) as err:
        deploy(make_minion("peer"), made, dest)
    message = str(err.value)
    assert "decompression bomb" in message and "past the cap of" in message, message
    assert ("recorded in the torrent" if recorded else "x the archive's size") in message
    assert not dest.exists() or os.listdir(dest) == []


@pytest.fixture
def planted(make_minion):
    """(peer minion, its peer run directory, victim): a pidfile there names the victim, an
    unrelated process (killed afterwards)."""
    peer = make_minion("peer")
    victim = subprocess.Popen(["sleep", "300"])
    try:
        where = common.ensure_dir(run_dir(peer, "peer"))
        start = procs._proc_start_time(victim.pid)  # pylint: disable=protected-access
        with open(os.path.join(where, "pid"), "w") as fh:
            fh.write(f"{victim.pid} {start}\n")
        yield peer, where, victim
    finally:
        victim.kill()
        victim.wait()


def test_planted_pidfile_never_kills_another_process(planted):
    peer, _, victim = planted
    assert peer.modules.lssd.status()["processes"][0]["running"] is False
    stopped = peer.modules.lssd.peer_stop(TAG)
    assert stopped["changed"] is False and "not running" in stopped["comment"], stopped
    assert victim.poll() is None, "the planted pid was signalled"


@needs_root
def test_pidfile_another_user_owns_never_kills(planted):
    _, where, victim = planted
    os.chown(os.path.join(where, "pid"), 65534, 65534)
    assert procs.stop(where) is None
    assert victim.poll() is None, "the pid of another user's pidfile was signalled"


def test_state_dir_open_to_others_is_refused(make_minion, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    minion = make_minion("peer", state_dir=str(open_dir), seeder_files_path=str(make_build_tree(tmp_path / "b", 1)))
    with pytest.raises(CommandExecutionError, match=r"writable by group or others \(mode 0777\)"):
        minion.modules.lssd.create_torrent(TAG)


@needs_root
def test_state_dir_of_another_user_is_refused(make_minion, tmp_path):
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    minion = make_minion("peer", state_dir=str(other), seeder_files_path=str(make_build_tree(tmp_path / "b", 1)))
    with pytest.raises(CommandExecutionError, match=r"owned by uid 65534, not by the user running lssd"):
        minion.modules.lssd.create_torrent(TAG)


def test_umask_000_still_makes_private_directories(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    # Minions made first: their cachedir is Salt's, and lssd refuses one open to others.
    seeder = make_minion("seeder", seeder_files_path=str(build))
    peer = make_minion("peer")
    old = os.umask(0)
    try:
        made = seeder.modules.lssd.create_torrent(TAG)
        tracker.modules.lssd.tracker_allow(made["torrent"])
        seeder.modules.lssd.seed_start(TAG)
        deploy(peer, made, tmp_path / "dest")
    finally:
        os.umask(old)
    checked = 0
    for minion in (tracker, seeder, peer):
        for dirpath, _, files in os.walk(state_dir(minion)):
            assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
            checked += 1
            # What the detached roles write is private too (they set their own umask).
            for name in files if "/run/" in dirpath else ():
                mode = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
                assert mode == 0o600, (os.path.join(dirpath, name), oct(mode))
    assert checked > 10
    downloads = os.path.join(state_dir(peer), "downloads", os.path.basename(made["archive"]))
    assert stat.S_IMODE(os.stat(downloads).st_mode) == 0o600


def test_unreachable_tracker_fails_after_the_grace(make_minion, tmp_path):
    port = free_port()  # nobody listens there
    seeder = make_minion("seeder", seeder_files_path=str(make_build_tree(tmp_path / "build", data_mb=1)),
                         tracker={"host": "127.0.0.1", "port": port})
    made = seeder.modules.lssd.create_torrent(TAG)
    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as err:
        deploy(make_minion("peer"), made, tmp_path / "dest", timeout=600)
    took = time.monotonic() - started
    assert 25 < took < 120, took
    message = str(err.value)
    assert f"tracker http://127.0.0.1:{port}/announce unreachable" in message, message


def test_seeder_killed_after_one_full_copy_the_others_finish(make_minion, tracker, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=4)
    seeder, made = start_seeder(make_minion, tracker, build)
    first = make_minion("first")
    deploy(first, made, tmp_path / "first", linger=120)
    os.kill(procs.pid_of(run_dir(seeder, "seeder")), signal.SIGKILL)
    wait_for(lambda: procs.pid_of(run_dir(seeder, "seeder")) is None, 30, "the seeder's death")
    second = make_minion("second")
    result = deploy(second, made, tmp_path / "second", timeout=600)
    assert result["from_seeder"] == 0 and result["from_peers"] >= made["size"], result
    assert tree_manifest(tmp_path / "second" / TAG) == tree_manifest(tmp_path / "first" / TAG)
    first.modules.lssd.peer_stop()


def test_seeder_killed_before_any_full_copy_fails_the_peers_fast_naming_it(make_minion, tracker, tmp_path):
    # 8 MB at 1 MB/s: killed as soon as the peers have a little, the seeder cannot have sent
    # a full copy, and the peers stay connected to each other, trading what they hold.
    build = make_build_tree(tmp_path / "build", data_mb=8)
    seeder, made = start_seeder(make_minion, tracker, build, libtorrent_settings=SLOW_SEEDER)
    timeout = 600
    peers = [make_minion(f"peer{i}") for i in range(3)]
    jobs = [Background(lambda peer=peer, i=i: deploy(peer, made, tmp_path / f"dest{i}", timeout=timeout))
            for i, peer in enumerate(peers)]
    wait_for(lambda: all((role_state(peer, "peer").get("total_done") or 0) > 0 for peer in peers),
             120, "every peer's first piece")
    os.kill(procs.pid_of(run_dir(seeder, "seeder")), signal.SIGKILL)
    killed = time.monotonic()
    for i, (peer, job) in enumerate(zip(peers, jobs)):
        with pytest.raises(CommandExecutionError) as err:
            job.result(timeout=timeout + 60)
        message = str(err.value)
        assert "no complete copy left in the swarm: the seeder is gone (at " in message, message
        assert "did not complete within" not in message, message
        assert time.monotonic() - killed < timeout, "the peers waited for their timeout"
        assert role_state(peer, "peer")["progress"] < 100
        assert not (tmp_path / f"dest{i}" / TAG).exists()


def test_two_tags_at_once_on_one_minion(make_minion, tracker, tmp_path):
    seeder = make_minion("seeder")
    made = {}
    for tag in ("TwoA", "TwoB"):
        build = make_build_tree(tmp_path / f"build-{tag}", data_mb=2, seed=tag.encode())
        made[tag] = seeder.modules.lssd.create_torrent(tag, files_path=str(build))
        tracker.modules.lssd.tracker_allow(made[tag]["torrent"])
        seeder.modules.lssd.seed_start(tag)
    peer = make_minion("peer")
    jobs = {tag: Background(lambda tag=tag: deploy(peer, made[tag], tmp_path / "dest", tag=tag, timeout=600))
            for tag in made}
    for tag, job in jobs.items():
        result = job.result()
        assert result["target"] == str(tmp_path / "dest" / tag)
        assert tree_manifest(tmp_path / "dest" / tag) == built(tmp_path / f"build-{tag}")
    assert sorted(peer.modules.lssd.status()["installed"]) == ["TwoA", "TwoB"]
    seeder.modules.lssd.seed_stop()
