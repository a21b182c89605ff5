"""tree.py, the tree-mode torrent, install_tree and delta placing, without a swarm."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import threading
import time

import libtorrent as lt
import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest, without

from salt_lssd import LssdError, bencode, delta, install, mine, pack, settings, tree
from salt_lssd import torrent as metainfo

URL = "http://127.0.0.1:8998/announce"


@pytest.fixture
def build(tmp_path):
    return pathlib.Path(make_build_tree(tmp_path / "build", data_mb=1))


def built_torrent(build, tmp_path):
    built = tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)
    made = metainfo.make_tree_torrent("R1", built["files"], built["piece_size"], str(tmp_path / "R1.torrent"), URL,
                                      lssd={"tag": "R1", "mode": "tree", "sha256": built["sha256"]})
    return built, made


def test_files_are_piece_aligned_and_the_manifest_comes_first(build, tmp_path):
    built, made = built_torrent(build, tmp_path)
    with open(made["torrent"], "rb") as fh:
        info = bencode.decode(fh.read())[b"info"]
    piece = info[b"piece length"]
    offset = 0
    files = info[b"files"]
    assert files[0][b"path"] == [tree.MANIFEST_NAME.encode()]
    for index, entry in enumerate(files):
        if b"attr" not in entry:
            assert offset % piece == 0, entry  # every real file starts a piece
        else:
            assert entry[b"attr"] == b"p" and entry[b"path"][0] == b".pad"
            assert files[index - 1].get(b"attr") is None
        offset += entry[b"length"]
    assert b"attr" not in files[-1]  # no pad after the last file
    assert len(info[b"pieces"]) // 20 == -(-offset // piece)
    read = metainfo.read_torrent(open(made["torrent"], "rb").read())
    assert read["size"] == made["size"] == sum(length for _, length, _ in built["files"])
    assert read["files"] == len(built["files"]) and read["lssd"]["mode"] == "tree"


def test_a_tree_torrent_may_carry_its_manifest_outside_the_info_dictionary(build, tmp_path):
    built, without_it = built_torrent(build, tmp_path)
    with_it = metainfo.make_tree_torrent("R1", built["files"], built["piece_size"], str(tmp_path / "R1m.torrent"),
                                         URL, lssd={"tag": "R1", "mode": "tree", "sha256": built["sha256"]},
                                         manifest=built["manifest"])
    read = metainfo.read_torrent(open(with_it["torrent"], "rb").read())
    assert read["manifest"] == built["manifest"]
    assert tree.parse_manifest(read["manifest"], read["lssd"]["sha256"])[1]
    # The same swarm: the info-hash does not change.
    assert read["infohash"] == with_it["infohash"] == without_it["infohash"]
    assert metainfo.read_torrent(open(without_it["torrent"], "rb").read())["manifest"] is None


def test_the_manifest_lists_the_tree_as_packing_sees_it(build, tmp_path):
    built, _ = built_torrent(build, tmp_path)
    root, entries = tree.parse_manifest(built["manifest"], built["sha256"])
    by_path = {e["path"]: e for e in entries}
    assert set(by_path) == set(without(tree_manifest(build), EXCLUDED))
    assert by_path["var/empty"]["kind"] == "dir"
    assert by_path["lib/pkg/run"] == dict(by_path["lib/pkg/run"], kind="symlink", target="../../bin/app")
    data = (build / "data" / "text.log").read_bytes()
    assert by_path["data/text.log"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert by_path["bin/app"]["mode"] == 0o755 and by_path["lib/pkg/__init__.py"]["size"] == 0
    assert root["mode"] == os.stat(build).st_mode & 0o7777
    with pytest.raises(LssdError, match="the torrent says"):
        tree.parse_manifest(built["manifest"] + b" ", built["sha256"])


@pytest.mark.parametrize("name", [tree.MANIFEST_NAME, ".pad"])
def test_reserved_names_are_refused(build, tmp_path, name):
    (build / name).write_bytes(b"x")
    with pytest.raises(LssdError, match=f"the name '{name}' is reserved in tree mode.*mode archive"):
        tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)


def test_what_packing_refuses_tree_mode_refuses(build, tmp_path):
    os.symlink("/etc/passwd", build / "escape")
    with pytest.raises(LssdError, match="points outside files_path"):
        tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)


@pytest.mark.parametrize("name, says", [
    ("a\nb", r"file name 'a\\nb' in {dir} contains a control character \(newline\); BitTorrent clients rewrite"),
    ("a\x01b", r"file name 'a\\x01b' in {dir} contains a control character \(U\+0001\)"),
    ("a\x85b", r"file name 'a\\x85b' in {dir} contains a control character \(U\+0085\)"),
    ("a\u200bb", r"file name 'a\\u200bb' in {dir} contains an invisible formatting character "
                 r"\(U\+200B ZERO WIDTH SPACE\)"),
    ("a\u202eb", r"contains an invisible formatting character \(U\+202E RIGHT-TO-LEFT OVERRIDE\)"),
    ("a\\b", r"file name 'a\\\\b' in {dir} contains a backslash"),
    (os.fsdecode(b"a\xffb"), r"file name b'a\\xffb' in {dir} is not UTF-8 \(byte 0xff\); torrents carry UTF-8 names"),
    ("x" * 241, r"file name 'x{{241}}' in {dir} is 241 bytes long; BitTorrent clients cut names to 240 bytes"),
], ids=["newline", "control", "c1-control", "zero-width", "bidi", "backslash", "not-utf8", "too-long"])
@pytest.mark.parametrize("where", ["top", "subdir"])
def test_names_bittorrent_clients_rewrite_are_refused_naming_the_file(build, tmp_path, name, says, where):
    parent = build if where == "top" else build / "lib"
    (parent / os.fsencode(name).decode("utf-8", "surrogateescape")).write_bytes(b"x")
    with pytest.raises(LssdError, match=says.format(dir=re.escape(str(parent)))):
        tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)


def test_a_directory_with_such_a_name_is_refused_before_its_files(build, tmp_path):
    (build / "bad\ndir").mkdir()
    (build / "bad\ndir" / "fine.txt").write_bytes(b"x")
    with pytest.raises(LssdError, match=rf"file name 'bad\\ndir' in {re.escape(str(build))} contains a control"):
        tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)


def test_names_bittorrent_clients_keep_are_accepted_as_they_are(build, tmp_path):
    names = ["caf\u00e9 menu.txt", "e\u0301", "a:b*c?", "trailing. ", "\U0001F600", "x" * 240]
    for name in names:
        (build / name).write_bytes(b"x")
    built, made = built_torrent(build, tmp_path)
    info = lt.torrent_info(made["torrent"])
    on_the_wire = {info.layout().file_path(i).split("/", 1)[1] for i in range(info.num_files())}
    assert set(names) <= on_the_wire


def test_path_is_file_refuses_a_file_name_clients_rewrite(tmp_path):
    for name, says in [("build\n.bin", "contains a control character (newline)"),
                       (os.fsdecode(b"build\xff.bin"), "is not UTF-8 (byte 0xff)")]:
        path = tmp_path / name
        path.write_bytes(b"x")
        with pytest.raises(LssdError) as err:
            pack.pack(str(path), str(tmp_path / "archives"), "T1", path_is_file=True)
        assert says in str(err.value) and str(tmp_path) in str(err.value), err.value
        assert not os.path.exists(tmp_path / "archives") or os.listdir(tmp_path / "archives") == []


def test_mode_setting_names_the_value_and_what_is_allowed():
    assert settings.check("mode", "tree") == "tree" and settings.default("mode") == "archive"
    with pytest.raises(LssdError, match=r"lssd:mode 'zip' is not a deploy mode; allowed: archive .* or tree"):
        settings.check("mode", "zip")


def test_too_big_a_torrent_names_the_count_size_and_limit(monkeypatch):
    monkeypatch.setattr(mine, "MAX_TORRENT_TEXT", 100)
    with pytest.raises(LssdError, match=r"\(7 files and directories\) takes \d+ bytes .* limit of 100 bytes.*'archive'"):
        mine.check_torrent_size(os.urandom(200), 7)


def downloaded(build, tmp_path):
    """What a finished download holds: the tree's non-empty files below a staging directory."""
    built, _ = built_torrent(build, tmp_path)
    source = tmp_path / "staging" / "R1"
    for path, _, _ in built["files"][1:]:
        os.makedirs(os.path.dirname(source / path), exist_ok=True)
        shutil.copyfile(build / path, source / path)
    return tree.parse_manifest(built["manifest"], built["sha256"]), source


def test_install_tree_builds_what_the_manifest_says(build, tmp_path):
    manifest, source = downloaded(build, tmp_path)
    dest = tmp_path / "dest"
    result = install.install_tree(str(source), manifest, str(dest), "R1", owner=None, group=None)
    assert tree_manifest(dest / "R1") == without(tree_manifest(build), EXCLUDED)
    assert sorted(os.listdir(dest)) == ["R1"] and result["files"] == len(manifest[1])


@pytest.mark.parametrize("spoil", ["extra", "changed", "escaping-link"])
def test_install_tree_refuses_and_leaves_nothing(build, tmp_path, spoil):
    (root, entries), source = downloaded(build, tmp_path)
    if spoil == "extra":
        (source / "planted").write_bytes(b"x")
        match = "'planted' is in the download but not in the manifest"
    elif spoil == "changed":
        (source / "data" / "text.log").write_bytes(b"other")
        match = "file 'data/text.log' has 5 bytes .* the manifest says"
    else:
        entries = entries + [{"path": "zz", "kind": "symlink", "mode": 0o777, "mtime": 0, "target": "../../x"}]
        match = "points outside the target"
    dest = tmp_path / "dest"
    with pytest.raises(LssdError, match=match):
        install.install_tree(str(source), (root, entries), str(dest), "R1", owner=None, group=None)
    assert os.listdir(dest) == []


def test_a_candidate_is_placed_only_if_its_content_matches(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"same bytes")
    bad.write_bytes(b"same bytez")  # same size, other content
    want = {"path": "a/b", "kind": "file", "size": 10, "sha256": hashlib.sha256(b"same bytes").hexdigest()}
    found = {want["sha256"]: [str(bad), str(tmp_path / "missing"), str(good)]}
    assert delta.place(found, [want], str(tmp_path / "tree")) == ([want["path"]], 10)
    assert (tmp_path / "tree" / "a" / "b").read_bytes() == b"same bytes"
    assert os.stat(tmp_path / "tree" / "a" / "b").st_ino != os.stat(good).st_ino  # a copy, never a link
    assert delta.place({want["sha256"]: [str(bad)]}, [want], str(tmp_path / "other")) == ([], 0)
    assert not (tmp_path / "other" / "a" / "b").exists()


def _unblocking(call, fifo):
    """``call()``'s value (or exception), failing the test (not hanging it) if it blocks on
    ``fifo``: a writer that opens and closes the FIFO releases a reader stuck in open()."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as exc:  # pylint: disable=broad-except
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail(f"blocked on the FIFO {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_candidate_that_is_not_a_regular_file_is_skipped_without_blocking(tmp_path):
    fifo, link, sock, good = tmp_path / "fifo", tmp_path / "link", tmp_path / "sock", tmp_path / "good"
    good.write_bytes(b"same bytes")
    os.mkfifo(fifo)
    os.symlink(good, link)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        want = {"path": "a/b", "kind": "file", "size": 10, "sha256": hashlib.sha256(b"same bytes").hexdigest()}
        found = {want["sha256"]: [str(fifo), str(link), str(sock)]}
        assert _unblocking(lambda: delta.place(found, [want], str(tmp_path / "tree")), fifo) == ([], 0)
        assert not (tmp_path / "tree" / "a" / "b").exists()
        found[want["sha256"]].append(str(good))
        assert _unblocking(lambda: delta.place(found, [want], str(tmp_path / "tree")), fifo) == (["a/b"], 10)


def test_placing_stops_at_the_deadline(tmp_path):
    (tmp_path / "held").write_bytes(b"same bytes")
    want = {"path": "a", "kind": "file", "size": 10, "sha256": hashlib.sha256(b"same bytes").hexdigest()}
    found = {want["sha256"]: [str(tmp_path / "held")]}
    assert delta.place(found, [want], str(tmp_path / "tree"), deadline=time.monotonic() - 1) == ([], 0)
    assert delta.place(found, [want], str(tmp_path / "tree"), deadline=time.monotonic() + 60) == (["a"], 10)


def test_hashing_refuses_a_fifo_at_once(tmp_path):
    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    with pytest.raises(LssdError, match=f"'{fifo}' is a fifo, not a regular file"):
        _unblocking(lambda: tree.hash_file(str(fifo), 10, 16384), fifo)


def test_manifest_is_deterministic(build, tmp_path):
    first, _ = built_torrent(build, tmp_path)
    again = tree.build(str(build), str(tmp_path / "archives"), metainfo.piece_size_for_files)
    assert first["manifest"] == again["manifest"]
    assert json.loads(first["manifest"])["version"] == tree.MANIFEST_VERSION


@pytest.mark.parametrize("path", ["../outside", "/etc/outside", "a/../../outside", "a\0b"])
def test_placing_refuses_a_manifest_path_that_leaves_the_tree(tmp_path, path):
    source = tmp_path / "held"
    source.write_bytes(b"same bytes")
    want = {"path": path, "kind": "file", "size": 10, "sha256": hashlib.sha256(b"same bytes").hexdigest()}
    (tmp_path / "stage" / "tree").mkdir(parents=True)
    with pytest.raises(LssdError, match="is not a path inside the tree"):
        delta.place({want["sha256"]: [str(source)]}, [want], str(tmp_path / "stage" / "tree"))
    assert not (tmp_path / "stage" / "outside").exists() and not (tmp_path / "outside").exists()


def test_tree_piece_size_counts_each_file_from_a_piece_boundary():
    kib = 1024
    # 3,000 files of 80 KiB: as one archive, 7,500 pieces of 32 KiB fit the cap of 8,192; as
    # a tree each file takes 3 pieces of 32 KiB (9,000), so the tree gets 64 KiB (6,000).
    assert metainfo.piece_size_for(3000 * 80 * kib) == 32 * kib
    assert metainfo.piece_size_for_files([80 * kib] * 3000) == 64 * kib
    # More files than the cap: every file is one piece at any size; larger saves nothing.
    assert metainfo.piece_size_for_files([2 * kib] * 20000) == metainfo.MIN_PIECE_SIZE
