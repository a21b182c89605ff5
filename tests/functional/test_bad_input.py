"""Bad input through the ``lssd`` execution module: a clear error naming the value, nothing
half-written in the destination, no process left running (the autouse fixture checks that)."""

import io
import os
import socket
import tarfile

import pytest
from lssd_testutil import make_build_tree
from salt.exceptions import CommandExecutionError
from salt_lssd import common
from salt_lssd import torrent as metainfo

from loaderutil import free_port, minion_loaders, stop_everything


@pytest.fixture(scope="module")
def lone_minion(tmp_path_factory):
    root = tmp_path_factory.mktemp("lone")
    loaders = minion_loaders(
        root, "m", free_port(), seeder_files_path=str(root), destination_path=str(root / "dest")
    )
    yield loaders
    stop_everything(loaders)


@pytest.mark.parametrize(
    "tag, fragment",
    [("a/b", "may not contain '/'"), ("..", "'..'"), ("re..lease", "'..'"), ("a b", "whitespace"),
     ("tab\there", "whitespace"), ("", "empty")],
)
@pytest.mark.parametrize("function", ["create_torrent", "seed_start", "peer", "rm_tgz"])
def test_bad_tag_is_refused(lone_minion, tag, fragment, function):
    with pytest.raises(CommandExecutionError) as err:
        getattr(lone_minion.modules.lssd, function)(tag)
    assert fragment in str(err.value)
    assert repr(tag) in str(err.value)
    assert not os.path.exists(lone_minion.opts["lssd"]["destination_path"])


def test_missing_files_path(make_minion, tmp_path):
    minion = make_minion("seeder")
    missing = tmp_path / "nope"
    with pytest.raises(CommandExecutionError, match=str(missing)):
        minion.modules.lssd.create_torrent("Deploy1", files_path=str(missing))


def test_files_path_not_set(make_minion):
    minion = make_minion("seeder")
    with pytest.raises(CommandExecutionError, match="seeder_files_path"):
        minion.modules.lssd.create_torrent("Deploy1")


def test_empty_files_path(make_minion, tmp_path):
    minion = make_minion("seeder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CommandExecutionError, match="empty"):
        minion.modules.lssd.create_torrent("Deploy1", files_path=str(empty))
    assert not os.listdir(os.path.join(minion.opts["cachedir"], "lssd", "archives"))


def test_tracker_port_in_use(make_minion):
    minion = make_minion("tracker")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandExecutionError, match=rf"port {port}.*in use"):
            minion.modules.lssd.tracker_start(port=port, bind="127.0.0.1")
    assert minion.modules.lssd.tracker_status()["running"] is False


def _seed_archive(tracker, seeder, tag, archive_path, compression, tracker_port, sha256=None):
    """Seed an archive we crafted (as create_torrent would) and register it with the tracker."""
    layout = common.Layout(os.path.join(seeder.opts["cachedir"], "lssd"))
    common.ensure_dir(layout.archives)
    archive = os.path.join(layout.archives, f"{tag}{'.tar.gz' if compression == 'gzip' else '.tar'}")
    os.replace(archive_path, archive)
    real = common.sha256_file(archive)
    made = metainfo.make_torrent(
        archive,
        layout.torrent(tag),
        metainfo.announce_url("127.0.0.1", tracker_port),
        lssd={"tag": tag, "sha256": sha256 or real, "compression": compression, "path_is_file": 0},
    )
    made.update(archive=archive, sha256=sha256 or real, tag=tag)
    common.write_json_atomic(layout.torrent_meta(tag), made)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(tag)
    return made


def _tar_with(tmp_path, members):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"ok\n"))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _file(name, data=b"evil\n"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _symlink(name, target):
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "members, fragment",
    [
        ([_file("../evil")], "../evil"),
        ([_file("/tmp/lssd-evil-absolute")], "/tmp/lssd-evil-absolute"),
        ([_symlink("link", "/etc/passwd")], "/etc/passwd"),
    ],
    ids=["dotdot", "absolute", "symlink-out"],
)
def test_malicious_archive_through_the_swarm(make_minion, tmp_path, tracker_port, members, fragment):
    tracker, seeder, peer = make_minion("tracker"), make_minion("seeder"), make_minion("peer")
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    made = _seed_archive(tracker, seeder, "Evil1", _tar_with(tmp_path, members), "none", tracker_port)
    dest = tmp_path / "dest"
    with pytest.raises(CommandExecutionError) as err:
        peer.modules.lssd.peer("Evil1", destination_path=str(dest), torrent=made["torrent"], linger=0)
    assert fragment in str(err.value)
    assert not (dest / "Evil1").exists()
    assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/lssd-evil-absolute")
    assert [p for p in dest.iterdir()] == [] if dest.exists() else True
    seeder.modules.lssd.seed_stop()
    tracker.modules.lssd.tracker_stop()


def test_sha256_mismatch(make_minion, tmp_path, tracker_port):
    tracker, seeder, peer = make_minion("tracker"), make_minion("seeder"), make_minion("peer")
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    build = make_build_tree(tmp_path / "build", data_mb=1)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(build, arcname=".")
    wrong = "0" * 64
    made = _seed_archive(tracker, seeder, "Bad1", str(archive), "none", tracker_port, sha256=wrong)
    dest = tmp_path / "dest"
    with pytest.raises(CommandExecutionError) as err:
        peer.modules.lssd.peer("Bad1", destination_path=str(dest), torrent=made["torrent"], linger=0)
    assert wrong in str(err.value)
    assert not (dest / "Bad1").exists()
    peer_archives = os.path.join(peer.opts["cachedir"], "lssd", "downloads")
    assert os.listdir(peer_archives) == []
    seeder.modules.lssd.seed_stop()
    tracker.modules.lssd.tracker_stop()


def test_non_empty_destination_refused_before_download(make_minion, tmp_path):
    peer = make_minion("peer")
    dest = tmp_path / "dest"
    (dest / "Deploy1").mkdir(parents=True)
    (dest / "Deploy1" / "keep.txt").write_text("mine")
    with pytest.raises(CommandExecutionError, match="unsafe_please_delete"):
        peer.modules.lssd.peer("Deploy1", destination_path=str(dest), torrent=str(tmp_path / "none.torrent"))
    assert (dest / "Deploy1" / "keep.txt").read_text() == "mine"
    assert peer.modules.lssd.status()["processes"] == []


def test_rm_tgz_removes_only_its_own_tag(lone_minion):
    layout = common.Layout(os.path.join(lone_minion.opts["cachedir"], "lssd"))
    common.ensure_dir(layout.archives)
    for name in ("v1.tar.zst", "v1.2.tar.zst", "v1--x.tar"):
        with open(os.path.join(layout.archives, name), "wb") as fh:
            fh.write(b"x")
    removed = lone_minion.modules.lssd.rm_tgz("v1")["removed"]
    assert removed == [os.path.join(layout.archives, "v1.tar.zst")]
    assert sorted(os.listdir(layout.archives)) == ["v1--x.tar", "v1.2.tar.zst"]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"max_allowed_in_request_queue_typo": 4}, "'max_allowed_in_request_queue_typo' is not a libtorrent"),
        ({"max_allowed_in_request_queue": "4"}, "max_allowed_in_request_queue = '4' must be of type int"),
        ({"enable_dht": 1}, "enable_dht = 1 must be of type bool"),
        (["enable_dht"], "must be a mapping"),
    ],
    ids=["unknown-name", "str-for-int", "int-for-bool", "not-a-mapping"],
)
@pytest.mark.parametrize("function", ["seed_start", "peer"])
def test_bad_libtorrent_settings_refused_before_anything_starts(make_minion, tmp_path, overrides, fragment, function):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    minion = make_minion("m", libtorrent_settings=overrides, seeder_files_path=str(build))
    lssd = minion.modules.lssd
    if function == "seed_start":
        lssd.create_torrent("Lt1")
        call = lambda: lssd.seed_start("Lt1")  # noqa: E731
    else:
        made = make_minion("seeder", seeder_files_path=str(build)).modules.lssd.create_torrent("Lt1")
        call = lambda: lssd.peer("Lt1", destination_path=str(tmp_path / "dest"), torrent=made["torrent"])  # noqa: E731
    with pytest.raises(CommandExecutionError) as err:
        call()
    assert "lssd:libtorrent_settings" in str(err.value) and fragment in str(err.value)
    assert not any(p["running"] for p in lssd.status()["processes"])
    assert not (tmp_path / "dest").exists()


def test_libtorrent_settings_reach_the_role(make_minion, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    minion = make_minion("m", libtorrent_settings={"max_allowed_in_request_queue": 8}, seeder_files_path=str(build))
    minion.modules.lssd.create_torrent("Lt2")
    minion.modules.lssd.seed_start("Lt2")
    try:
        run_dir = os.path.join(minion.opts["cachedir"], "lssd", "run", "seeder-Lt2")
        config = common.read_json(os.path.join(run_dir, "config.json"))
        assert config["settings"] == {"max_allowed_in_request_queue": 8}
    finally:
        minion.modules.lssd.seed_stop()
