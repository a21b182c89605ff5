"""pack.py: the seeder's archive of a build tree."""

import io
import os
import subprocess
import tarfile

import pytest
from lssd_testutil import EXCLUDED, make_build_tree, tree_manifest
from salt_lssd import LssdError, pack
from salt_lssd.common import sha256_file


@pytest.fixture
def tree(tmp_path):
    return make_build_tree(tmp_path / "build")


@pytest.fixture
def archive_dir(tmp_path):
    return str(tmp_path / "archives")


def read_members(archive):
    """The tar members of an archive of any compression, in archive order."""
    compression = pack.compression_of(archive)
    with open(archive, "rb") as fh:
        if compression == "none":
            data = fh.read()
        else:
            command = pack.tool_command(compression, decompress=True)
            data = subprocess.run(command, stdin=fh, stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def assert_no_archive(archive_dir):
    assert not os.path.exists(archive_dir) or os.listdir(archive_dir) == []


def test_suffixes_round_trip():
    assert [pack.archive_suffix(c) for c in pack.COMPRESSIONS] == [".tar", ".tar.gz", ".tar.zst"]
    for compression in pack.COMPRESSIONS:
        assert pack.compression_of("/x/Deploy1" + pack.archive_suffix(compression)) == compression
    assert pack.compression_of("build.tgz") == "gzip"
    assert pack.DEFAULT_COMPRESSION in pack.COMPRESSIONS
    assert pack.DEFAULT_EXCLUDE == [".git*", ".svn*"]
    with pytest.raises(LssdError, match=r"'Deploy1.zip'.*\.tar"):
        pack.compression_of("Deploy1.zip")
    with pytest.raises(LssdError, match=r"'bzip2' is unknown; allowed: none, gzip, zstd"):
        pack.archive_suffix("bzip2")


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_pack_result_and_members(tree, archive_dir, compression):
    result = pack.pack(tree, archive_dir, "Deploy1", compression=compression)
    archive = os.path.join(archive_dir, "Deploy1" + pack.archive_suffix(compression))
    assert result["archive"] == archive and os.path.isabs(result["archive"])
    assert result["compression"] == compression
    assert result["size"] == os.path.getsize(archive)
    assert result["sha256"] == sha256_file(archive)
    assert os.listdir(archive_dir) == [os.path.basename(archive)]  # no temp left

    expected = {rel: entry for rel, entry in tree_manifest(tree).items() if rel not in EXCLUDED}
    members = read_members(archive)
    names = [m.name for m in members]
    assert names[0] == "."  # the root entry (tarfile reads "./" as ".")
    # "./"-relative names, parents before children, in sorted order.
    rels = [n[2:] for n in names[1:]]
    assert all(n.startswith("./") for n in names[1:])
    assert rels == sorted(rels, key=lambda r: r.split("/"))
    assert set(rels) == set(expected)
    assert result["files"] == len(expected)
    files = {rel: e for rel, e in expected.items() if e[0] == "file"}
    assert result["input_bytes"] == sum(
        os.path.getsize(os.path.join(tree, rel)) for rel in files if rel != "data/blob.bin"
    )

    by_name = {m.name[2:]: m for m in members[1:]}
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
    assert by_name["bin/app"].mode == 0o755
    assert by_name["conf/secret.conf"].mode == 0o640
    assert by_name["var"].mode == 0o750 and by_name["var"].isdir()
    assert by_name["var/empty"].isdir()
    assert by_name["lib/current"].issym() and by_name["lib/current"].linkname == "pkg"
    # The first name of a hard-linked file (in sorted order) carries the data, the next links.
    assert by_name["data/blob-hardlink.bin"].isreg()
    assert (
        by_name["data/blob.bin"].islnk() and by_name["data/blob.bin"].linkname == "./data/blob-hardlink.bin"
    )
    assert by_name["bin/app"].mtime == int(os.stat(os.path.join(tree, "bin/app")).st_mtime)


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_same_tree_same_bytes(tree, tmp_path, compression):
    first = pack.pack(tree, tmp_path / "one", "Deploy1", compression=compression)
    second = pack.pack(tree, tmp_path / "two", "Deploy1", compression=compression)
    assert first["sha256"] == second["sha256"]


def test_excludes(tree, archive_dir):
    def names(result):
        return {m.name[2:] for m in read_members(result["archive"])} - {""}

    everything = names(pack.pack(tree, archive_dir, "everything", compression="none", exclude=[]))
    assert EXCLUDED <= everything
    some = names(pack.pack(tree, archive_dir, "some", compression="none", exclude=["*.log", "lib/pkg/sub"]))
    assert "data/text.log" not in some and "lib/pkg/sub" not in some
    assert "lib/pkg/sub/deep/er/leaf.txt" not in some
    assert ".git/HEAD" in some and "lib/pkg/mod.py" in some
    assert names(pack.pack(tree, archive_dir, "one", compression="none", exclude="*.bin")) >= {"bin/app"}


def test_replaces_older_archive(tree, archive_dir):
    pack.pack(tree, archive_dir, "Deploy1", compression="none")
    os.remove(os.path.join(tree, "bin/app"))
    result = pack.pack(tree, archive_dir, "Deploy1", compression="none")
    assert "./bin/app" not in {m.name for m in read_members(result["archive"])}
    assert os.listdir(archive_dir) == ["Deploy1.tar"]


@pytest.mark.parametrize("tag", ["a/b", "..", "a b", "", ".hidden", "tab\there"])
def test_bad_tag(tree, archive_dir, tag):
    with pytest.raises(LssdError) as err:
        pack.pack(tree, archive_dir, tag)
    assert repr(tag) in str(err.value)
    assert_no_archive(archive_dir)


def test_unknown_compression(tree, archive_dir):
    with pytest.raises(LssdError, match=r"compression 'xz' is unknown; allowed: none, gzip, zstd"):
        pack.pack(tree, archive_dir, "Deploy1", compression="xz")
    assert_no_archive(archive_dir)


def test_missing_files_path(tmp_path, archive_dir):
    missing = str(tmp_path / "nope")
    with pytest.raises(LssdError, match=rf"files_path '{missing}' does not exist"):
        pack.pack(missing, archive_dir, "Deploy1")
    assert_no_archive(archive_dir)


def test_files_path_is_a_file(tree, archive_dir):
    path = os.path.join(tree, "bin/app")
    with pytest.raises(LssdError, match=rf"'{path}' is not a directory; set path_is_file"):
        pack.pack(path, archive_dir, "Deploy1")
    assert_no_archive(archive_dir)


def test_empty_files_path(tmp_path, archive_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LssdError, match=rf"files_path '{empty}' is empty; there is nothing"):
        pack.pack(empty, archive_dir, "Deploy1")
    (empty / ".git").mkdir()
    (empty / ".gitignore").write_text("x")
    with pytest.raises(LssdError, match=r"is empty after excluding \['.git\*', '.svn\*'\]"):
        pack.pack(empty, archive_dir, "Deploy1")
    assert_no_archive(archive_dir)


def test_only_empty_directories_is_not_empty(tmp_path, archive_dir):
    (tmp_path / "tree" / "logs").mkdir(parents=True)
    result = pack.pack(tmp_path / "tree", archive_dir, "Deploy1", compression="none")
    assert result["files"] == 1 and result["input_bytes"] == 0


def test_escaping_symlink_refused(tree, archive_dir):
    os.symlink("/etc/passwd", os.path.join(tree, "lib/passwd"))
    with pytest.raises(LssdError, match=r"symlink '.*/lib/passwd' -> '/etc/passwd' points outside"):
        pack.pack(tree, archive_dir, "Deploy1", compression="none")
    assert_no_archive(archive_dir)
    # Excluded, it is no longer shipped, so no longer a problem.
    pack.pack(tree, archive_dir, "Deploy1", compression="none", exclude=[".git*", "passwd"])


def test_fifo_refused(tree, archive_dir):
    os.mkfifo(os.path.join(tree, "lib/pipe"))
    with pytest.raises(LssdError, match=r"'.*/lib/pipe' is a fifo; only regular files"):
        pack.pack(tree, archive_dir, "Deploy1", compression="gzip")
    assert_no_archive(archive_dir)


def test_archive_dir_inside_files_path(tree):
    inside = os.path.join(tree, "out")
    with pytest.raises(LssdError, match=r"archive_dir '.*/out' is inside files_path"):
        pack.pack(tree, inside, "Deploy1")
    assert not os.path.exists(inside)


@pytest.mark.parametrize(
    ("compression", "message"),
    [
        ("zstd", r"^zstd not found on PATH: install the zstd package \(lssd.setup does\)$"),
        ("gzip", r"^neither pigz nor gzip found on PATH: install the pigz package"),
    ],
)
def test_compressor_missing(tree, archive_dir, tmp_path, monkeypatch, compression, message):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(LssdError, match=message):
        pack.pack(tree, archive_dir, "Deploy1", compression=compression)
    assert_no_archive(archive_dir)
    # "none" needs no program.
    pack.pack(tree, archive_dir, "Deploy1", compression="none")


def test_compressor_failure_leaves_nothing(tree, archive_dir, monkeypatch):
    monkeypatch.setattr(
        pack,
        "tool_command",
        lambda c, decompress=False: ["sh", "-c", "head -c 100000 >/dev/null; echo boom >&2; exit 3"],
    )
    with pytest.raises(LssdError, match=r"sh (stopped early|failed) \(exit 3\): boom"):
        pack.pack(tree, archive_dir, "Deploy1", compression="zstd")
    assert_no_archive(archive_dir)


def test_unreadable_tree_leaves_nothing(tree, archive_dir, monkeypatch):
    real_open = pack.open_regular

    # Root reads files whatever their mode: the refusal is made here.
    def failing_open(path):
        if str(path).endswith("text.log"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(pack, "open_regular", failing_open)
    with pytest.raises(LssdError, match=r"cannot read '.*/data/text.log': Permission denied"):
        pack.pack(tree, archive_dir, "Deploy1", compression="zstd")
    monkeypatch.undo()
    assert_no_archive(archive_dir)


def test_path_is_file(tree, archive_dir):
    path = os.path.join(tree, "data/text.log")
    result = pack.pack(path, archive_dir, "Deploy1", path_is_file=True)
    assert result["archive"] == os.path.join(archive_dir, "Deploy1--text.log")
    assert result["compression"] == "none" and result["files"] == 1
    assert result["file_name"] == "text.log"
    assert result["size"] == result["input_bytes"] == os.path.getsize(path)
    assert result["sha256"] == sha256_file(path) == sha256_file(result["archive"])
    # A copy, not a link: rewriting the build output does not change what is seeded.
    assert os.stat(result["archive"]).st_ino != os.stat(path).st_ino
    assert os.listdir(archive_dir) == ["Deploy1--text.log"]


def test_path_is_file_errors(tree, archive_dir):
    with pytest.raises(LssdError, match=rf"files_path '{tree}' is a directory, but path_is_file is set"):
        pack.pack(tree, archive_dir, "Deploy1", path_is_file=True)
    with pytest.raises(LssdError, match=r"compression 'gzip' cannot be used with path_is_file"):
        pack.pack(
            os.path.join(tree, "bin/app"), archive_dir, "Deploy1", compression="gzip", path_is_file=True
        )
    assert_no_archive(archive_dir)


def test_link_escapes():
    inside = [("a", "b"), ("d/a", "../b"), ("d/e/a", "../../b"), ("d/a", "."), ("d/a", "..")]
    outside = [
        ("a", "/etc/passwd"),
        ("a", ".."),
        ("a", "../x"),
        ("d/a", "../../x"),
        ("a", "b/../../x"),
        ("a", ""),
    ]
    assert not any(pack.link_escapes(name, link) for name, link in inside)
    assert all(pack.link_escapes(name, link) for name, link in outside)
    # Climbing out and back in still escapes: the tree's own name differs on each peer.
    assert pack.link_escapes("d/a", "../../build/x")
