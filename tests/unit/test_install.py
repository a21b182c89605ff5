"""install.py: the peer's atomic, traversal-safe install of an archive."""

import errno
import io
import os
import shutil
import subprocess
import tarfile

import pytest
from lssd_testutil import make_build_tree, tree_manifest, without
from salt_lssd import LssdError, install, pack
from salt_lssd.common import sha256_file

TAG = "Deploy1"


@pytest.fixture
def tree(tmp_path):
    return make_build_tree(tmp_path / "build")


@pytest.fixture
def dest(tmp_path):
    return str(tmp_path / "opt" / "hoge")


@pytest.fixture
def packed(tree, tmp_path):
    """The tree packed once per compression (lazily)."""
    made = {}

    def get(compression="none"):
        if compression not in made:
            made[compression] = pack.pack(tree, tmp_path / "archives", TAG, compression=compression)
        return made[compression]

    return get


def assert_nothing_left(dest, target=None, before=None):
    """The target is as it was (absent, or ``before``) and no temporary or set-aside tree remains."""
    target = target or os.path.join(dest, TAG)
    if before is None:
        assert not os.path.lexists(target)
    else:
        assert tree_manifest(target) == before
    parent = os.path.dirname(target)
    if os.path.isdir(parent):
        assert [n for n in os.listdir(parent) if ".lssd-" in n] == []


def evil_archive(path, *members):
    """A tar written with tarfile directly; each member: (TarInfo, bytes or None)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        good = tarfile.TarInfo("./good.txt")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"ok\n"))
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return str(path)


def info(name, type=tarfile.REGTYPE, linkname="", mode=0o644):
    member = tarfile.TarInfo(name)
    member.type = type
    member.linkname = linkname
    member.mode = mode
    return member


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_round_trip(tree, dest, packed, compression):
    result = packed(compression)
    installed = install.install(result["archive"], dest, TAG)
    target = os.path.join(dest, TAG)
    assert installed == {
        "target": target,
        "files": result["files"],
        "bytes": result["input_bytes"],
        "replaced": False,
        "sha256": None,
    }
    manifest = tree_manifest(target)
    assert manifest == without(tree_manifest(tree))
    assert manifest["var/empty"] == ("dir", 0o755, None)
    assert manifest["lib/current"] == ("symlink", 0o777, "pkg")
    assert not os.path.lexists(os.path.join(target, ".git"))
    assert not os.path.lexists(os.path.join(target, "lib/pkg/.gitattributes"))
    # Hard links stay hard links; mtimes are kept (whole seconds); the root keeps the build
    # directory's mode when no mode is given.
    assert (
        os.stat(os.path.join(target, "data/blob.bin")).st_ino
        == os.stat(os.path.join(target, "data/blob-hardlink.bin")).st_ino
    )
    for rel in ("bin/app", "lib/pkg/sub/deep/er", "var/empty"):
        assert os.stat(os.path.join(target, rel)).st_mtime == int(os.stat(os.path.join(tree, rel)).st_mtime)
    assert os.stat(target).st_mode & 0o7777 == os.stat(tree).st_mode & 0o7777
    assert_nothing_left(dest, before=manifest)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_sha256_checked_in_the_same_pass(dest, packed, compression):
    result = packed(compression)
    good = install.install(result["archive"], dest, TAG, sha256=result["sha256"].upper())
    assert good["sha256"] == result["sha256"]
    wrong = "0" * 64
    with pytest.raises(
        LssdError, match=rf"SHA-256 {result['sha256']}, expected {wrong}; nothing was installed"
    ):
        install.install(result["archive"], dest, "Other", sha256=wrong)
    assert_nothing_left(dest, os.path.join(dest, "Other"))
    with pytest.raises(LssdError, match=r"sha256 'abc' is not a SHA-256"):
        install.install(result["archive"], dest, "Other", sha256="abc")


def test_compression_from_suffix_or_given(dest, packed, tmp_path):
    result = packed("zstd")
    renamed = str(tmp_path / "download.bin")
    shutil.copy(result["archive"], renamed)
    with pytest.raises(LssdError, match=r"archive '.*/download.bin' has no known suffix"):
        install.install(renamed, dest, TAG)
    install.install(renamed, dest, TAG, compression="zstd")
    with pytest.raises(LssdError, match=r"compression 'lz4' is unknown; allowed: none, gzip, zstd"):
        install.install(renamed, dest, "Other", compression="lz4")


def test_owner_group_mode(tree, dest, packed):
    if os.geteuid() != 0:
        pytest.skip("changing owners needs root")
    result = packed("gzip")
    installed = install.install(result["archive"], dest, TAG, owner=12345, group="23456", mode="0750")
    target = installed["target"]
    os.chmod(tree, 0o700)  # the target's mode comes from mode=, not from the tree
    assert os.stat(target).st_mode & 0o7777 == 0o750
    for dirpath, dirnames, filenames in os.walk(target):
        for name in [""] + dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert (st.st_uid, st.st_gid) == (12345, 23456), os.path.join(dirpath, name)
    # Files below keep the archive's modes; chown did not strip them.
    assert tree_manifest(target) == without(tree_manifest(tree))
    # Names work too.
    install.install(result["archive"], dest, "ByName", owner="root", group="root", mode=0o711)
    st = os.stat(os.path.join(dest, "ByName"))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o711)


def test_mode_forms():
    assert install.parse_mode("0755") == 0o755
    assert install.parse_mode("755") == 0o755
    assert install.parse_mode("0o2775") == 0o2775
    assert install.parse_mode(0o640) == 0o640
    assert install.parse_mode(None) is None


# -- the target: exists, empty, replaced --------------------------------------------------------


def test_non_empty_target_refused(dest, packed):
    target = os.path.join(dest, TAG)
    os.makedirs(os.path.join(target, "old"))
    with open(os.path.join(target, "old", "keep.txt"), "w") as fh:
        fh.write("precious")
    before = tree_manifest(target)
    with pytest.raises(
        LssdError, match=rf"target '{target}' is not empty; set unsafe_please_delete to replace it"
    ):
        install.install(packed()["archive"], dest, TAG)
    assert_nothing_left(dest, before=before)
    # check() says so before anything is downloaded.
    with pytest.raises(LssdError, match="unsafe_please_delete"):
        install.check(dest, TAG)


def test_file_at_target_refused(dest, packed):
    os.makedirs(dest)
    target = os.path.join(dest, TAG)
    with open(target, "w") as fh:
        fh.write("x")
    with pytest.raises(LssdError, match=rf"target '{target}' exists; set unsafe_please_delete"):
        install.install(packed()["archive"], dest, TAG)
    with open(target) as fh:
        assert fh.read() == "x"


def test_empty_target_is_filled(tree, dest, packed):
    os.makedirs(os.path.join(dest, TAG))
    installed = install.install(packed()["archive"], dest, TAG)
    assert installed["replaced"] is True
    assert tree_manifest(installed["target"]) == without(tree_manifest(tree))


def test_unsafe_please_delete_replaces(tree, dest, packed, tmp_path):
    target = os.path.join(dest, TAG)
    os.makedirs(os.path.join(target, "old/ro"))
    os.chmod(os.path.join(target, "old/ro"), 0o555)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.symlink(str(outside), os.path.join(target, "old/link-out"))
    installed = install.install(packed("zstd")["archive"], dest, TAG, unsafe_please_delete=True)
    assert installed["replaced"] is True
    assert tree_manifest(target) == without(tree_manifest(tree))
    assert outside.read_text() == "not ours"  # a link in the old tree was not followed
    assert os.listdir(dest) == [TAG]


def test_unsafe_please_delete_replaces_a_symlink_not_its_target(tree, dest, packed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_text("keep")
    os.makedirs(dest)
    os.symlink(str(elsewhere), os.path.join(dest, TAG))
    install.install(packed()["archive"], dest, TAG, unsafe_please_delete=True)
    assert not os.path.islink(os.path.join(dest, TAG))
    assert (elsewhere / "x").read_text() == "keep"


def test_failed_swap_puts_the_old_tree_back(dest, packed, monkeypatch):
    target = os.path.join(dest, TAG)
    os.makedirs(target)
    with open(os.path.join(target, "old.txt"), "w") as fh:
        fh.write("old")
    before = tree_manifest(target)
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if ".lssd-tmp-" in os.path.basename(src) and dst == target:
            raise OSError(errno.EIO, "injected failure", src)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(LssdError, match="injected failure"):
        install.install(packed()["archive"], dest, TAG, unsafe_please_delete=True)
    monkeypatch.undo()
    assert_nothing_left(dest, before=before)


def test_no_tag_directory(tree, dest, packed):
    archive = packed("gzip")["archive"]
    installed = install.install(archive, dest, TAG, no_tag_directory=True)
    assert installed["target"] == dest
    assert tree_manifest(dest) == without(tree_manifest(tree))
    before = tree_manifest(dest)
    with pytest.raises(LssdError, match=rf"target '{dest}' is not empty"):
        install.install(archive, dest, TAG, no_tag_directory=True)
    assert_nothing_left(dest, dest, before=before)
    os.remove(os.path.join(dest, "bin/app"))
    replaced = install.install(archive, dest, TAG, no_tag_directory=True, unsafe_please_delete=True)
    assert replaced["replaced"] is True
    assert tree_manifest(dest) == before
    assert sorted(n for n in os.listdir(os.path.dirname(dest)) if n.startswith(".")) == []


def test_no_tag_directory_not_root(packed):
    with pytest.raises(LssdError, match=r"destination_path '/' cannot be the target"):
        install.install(packed()["archive"], "/", TAG, no_tag_directory=True)


# -- refused arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["a/b", "..", "a b"])
def test_bad_tag(dest, packed, tag):
    with pytest.raises(LssdError) as err:
        install.install(packed()["archive"], dest, tag)
    assert repr(tag) in str(err.value)
    assert not os.path.exists(dest)


def test_relative_destination(packed):
    with pytest.raises(LssdError, match=r"destination_path 'opt/hoge' must be an absolute path"):
        install.install(packed()["archive"], "opt/hoge", TAG)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner": "no-such-user-lssd"}, r"owner 'no-such-user-lssd' is not a user on this host"),
        ({"group": "no-such-group-lssd"}, r"group 'no-such-group-lssd' is not a group on this host"),
        ({"owner": -5}, r"owner -5 is not a valid numeric id"),
        ({"mode": "0999"}, r"mode '0999' is not an octal mode"),
        ({"mode": "rwxr-xr-x"}, r"mode 'rwxr-xr-x' is not an octal mode"),
        ({"mode": "12345"}, r"mode '12345' is not an octal mode of at most 4 digits"),
        ({"mode": 0o17777}, r"mode 8191 is out of range"),
        ({"mode": True}, r"mode True is not a mode"),
    ],
)
def test_bad_owner_group_mode(dest, packed, kwargs, message):
    with pytest.raises(LssdError, match=message):
        install.install(packed()["archive"], dest, TAG, **kwargs)
    # Refused before anything was extracted.
    assert not os.path.exists(dest)


def test_missing_archive(dest, tmp_path):
    missing = str(tmp_path / "Deploy1.tar.zst")
    with pytest.raises(LssdError, match=rf"archive '{missing}' does not exist"):
        install.install(missing, dest, TAG)


def test_decompressor_missing(dest, packed, tmp_path, monkeypatch):
    archive = packed("zstd")["archive"]
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(LssdError, match=r"^zstd not found on PATH: install the zstd package"):
        install.install(archive, dest, TAG)
    assert_nothing_left(dest)


# -- corrupt archives ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_truncated_archive(dest, packed, tmp_path, compression):
    result = packed(compression)
    cut = str(tmp_path / os.path.basename(result["archive"]))
    with open(result["archive"], "rb") as src, open(cut, "wb") as out:
        out.write(src.read(result["size"] // 2))
    with pytest.raises(LssdError, match=rf"archive '{cut}' is corrupt or truncated"):
        install.install(cut, dest, TAG)
    assert_nothing_left(dest)


def test_tar_cut_at_a_member_boundary(dest, tmp_path):
    """tarfile alone would install the first member and call it done."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name in ("./a.txt", "./b.txt"):
            member = tarfile.TarInfo(name)
            member.size = 600
            tar.addfile(member, io.BytesIO(b"x" * 600))
    second = 512 + 1024  # a.txt: its header, then 600 bytes padded to whole blocks
    cut = tmp_path / "Deploy1.tar"
    cut.write_bytes(data.getvalue()[:second])
    with pytest.raises(LssdError, match=r"corrupt or truncated: no valid header at byte 1536"):
        install.install(str(cut), dest, TAG)
    assert_nothing_left(dest)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_garbage_archive(dest, tmp_path, suffix):
    junk = tmp_path / f"Deploy1{suffix}"
    junk.write_bytes(b"this is not an archive\n" * 100)
    with pytest.raises(LssdError, match=rf"archive '{junk}' is corrupt or truncated"):
        install.install(str(junk), dest, TAG)
    assert_nothing_left(dest)


# -- malicious archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((info("../evil"), b"x"), r"archive member '../evil' contains '..'"),
        ((info("./a/../../evil"), b"x"), r"archive member './a/../../evil' contains '..'"),
        ((info("ABSOLUTE"), b"x"), r"archive member 'ABSOLUTE' has an absolute path"),
        (
            (info("./passwd", tarfile.SYMTYPE, "/etc/passwd"), None),
            r"archive member './passwd' is a symlink to '/etc/passwd', which points outside",
        ),
        (
            (info("./d/x", tarfile.SYMTYPE, "../../x"), None),
            r"archive member './d/x' is a symlink to '../../x', which points outside",
        ),
        (
            (info("./h", tarfile.LNKTYPE, "/etc/passwd"), None),
            r"archive member './h' is a hardlink to '/etc/passwd', outside the target",
        ),
        (
            (info("./h", tarfile.LNKTYPE, "../outside"), None),
            r"archive member './h' is a hardlink to '../outside', outside the target",
        ),
        (
            (info("./h", tarfile.LNKTYPE, "./not-a-member"), None),
            r"archive member './h' is a hardlink to './not-a-member', which is not a regular file",
        ),
        ((info("./null", tarfile.CHRTYPE), None), r"archive member './null' is a character device"),
        ((info("./sda", tarfile.BLKTYPE), None), r"archive member './sda' is a block device"),
        ((info("./pipe", tarfile.FIFOTYPE), None), r"archive member './pipe' is a fifo"),
        ((info("./good.txt"), b"again"), r"archive member './good.txt' appears twice"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-absolute",
        "symlink-up",
        "hardlink-absolute",
        "hardlink-up",
        "hardlink-to-non-member",
        "char-device",
        "block-device",
        "fifo",
        "duplicate",
    ],
)
def test_malicious_member(dest, tmp_path, member, message):
    absolute = str(tmp_path / "evil-absolute")
    if member[0].name == "ABSOLUTE":
        member[0].name = absolute
        message = message.replace("ABSOLUTE", absolute)
    archive = evil_archive(tmp_path / "Deploy1.tar", member)
    with pytest.raises(LssdError, match=message):
        install.install(archive, dest, TAG)
    assert_nothing_left(dest)
    assert not os.path.lexists(absolute)
    assert not os.path.lexists(os.path.join(os.path.dirname(dest), "evil"))


def test_symlink_chain_escape(dest, tmp_path):
    """Each link looks inside on its own; together they climb out of the target."""
    archive = evil_archive(
        tmp_path / "Deploy1.tar",
        (info("./sub", tarfile.DIRTYPE, mode=0o755), None),
        (info("./sub/up", tarfile.SYMTYPE, ".."), None),
        (info("./out", tarfile.SYMTYPE, "sub/up/.."), None),
    )
    with pytest.raises(LssdError, match=r"'out' is a symlink to 'sub/up/..', which resolves outside"):
        install.install(archive, dest, TAG)
    assert_nothing_left(dest)


def test_no_writing_through_symlinks(dest, tmp_path):
    archive = evil_archive(
        tmp_path / "Deploy1.tar",
        (info("./sub", tarfile.DIRTYPE, mode=0o755), None),
        (info("./link", tarfile.SYMTYPE, "sub"), None),
        (info("./link/file"), b"through the link"),
    )
    with pytest.raises(LssdError, match=r"'./link/file' would be written through the symlink 'link'"):
        install.install(archive, dest, TAG)
    assert_nothing_left(dest)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_malicious_member_compressed(dest, tmp_path, compression):
    plain = evil_archive(tmp_path / "x.tar", (info("../evil"), b"x"))
    archive = str(tmp_path / f"Deploy1{pack.archive_suffix(compression)}")
    with open(plain, "rb") as src, open(archive, "wb") as out:
        subprocess.run(pack.tool_command(compression), stdin=src, stdout=out, check=True)
    with pytest.raises(LssdError, match=r"archive member '../evil' contains '..'"):
        install.install(archive, dest, TAG)
    assert_nothing_left(dest)


def test_archive_without_directory_entries(dest, tmp_path):
    """Foreign archives may leave directories implicit; they are made 0755."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        member = tarfile.TarInfo("a/b/c.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    (tmp_path / "Deploy1.tar").write_bytes(data.getvalue())
    installed = install.install(str(tmp_path / "Deploy1.tar"), dest, TAG)
    assert installed["files"] == 1
    assert tree_manifest(installed["target"]) == {
        "a": ("dir", 0o755, None),
        "a/b": ("dir", 0o755, None),
        "a/b/c.txt": ("file", 0o644, "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"),
    }
    assert os.stat(installed["target"]).st_mode & 0o7777 == install.DEFAULT_MODE


# -- path_is_file --------------------------------------------------------------------------------


def test_path_is_file(tree, dest, tmp_path):
    source = os.path.join(tree, "bin/app")
    packed = pack.pack(source, tmp_path / "archives", TAG, path_is_file=True)
    installed = install.install(packed["archive"], dest, TAG, path_is_file=True, owner=0, mode="0700")
    target = os.path.join(dest, TAG)
    assert installed == {
        "target": target,
        "files": 1,
        "bytes": os.path.getsize(source),
        "replaced": False,
        "sha256": None,
    }
    assert os.listdir(target) == ["app"]  # the name comes from the archive's "<tag>--" name
    assert sha256_file(os.path.join(target, "app")) == packed["sha256"]
    assert os.stat(os.path.join(target, "app")).st_mode & 0o777 == 0o755
    assert os.stat(target).st_mode & 0o7777 == 0o700
    # Same atomic rules: non-empty target refused, replaced with unsafe_please_delete.
    with pytest.raises(LssdError, match="unsafe_please_delete"):
        install.install(packed["archive"], dest, TAG, path_is_file=True, file_name="other")
    again = install.install(
        packed["archive"],
        dest,
        TAG,
        path_is_file=True,
        file_name="renamed",
        unsafe_please_delete=True,
        sha256=packed["sha256"],
    )
    assert again["replaced"] is True and os.listdir(target) == ["renamed"]


def test_path_is_file_errors(tree, dest, tmp_path):
    packed = pack.pack(os.path.join(tree, "bin/app"), tmp_path / "archives", TAG, path_is_file=True)
    with pytest.raises(LssdError, match=r"compression 'zstd' cannot be used with path_is_file"):
        install.install(packed["archive"], dest, TAG, path_is_file=True, compression="zstd")
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(LssdError, match=rf"file_name {bad!r} must be a plain file name"):
            install.install(packed["archive"], dest, TAG, path_is_file=True, file_name=bad)
    assert not os.path.exists(dest)


# -- size cap and free space ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_exact_recorded_size_installs(tree, dest, packed, compression):
    made = packed(compression)
    done = install.install(made["archive"], dest, TAG, unpacked_size=made["input_bytes"], sha256=made["sha256"])
    assert done["bytes"] == made["input_bytes"]


@pytest.mark.parametrize("compression", pack.COMPRESSIONS)
def test_extraction_stops_past_the_recorded_size(dest, packed, compression):
    made = packed(compression)
    with pytest.raises(LssdError) as err:
        install.install(made["archive"], dest, TAG, unpacked_size=made["input_bytes"] - 1)
    message = str(err.value)
    assert f"past the cap of {made['input_bytes'] - 1} bytes" in message
    assert "the unpacked size the seeder recorded" in message and "decompression bomb" in message
    assert_nothing_left(dest)


def test_older_torrent_cap_is_a_multiple_of_the_archive(dest, tmp_path):
    # Without a recorded size the cap is 100 x the archive (at least 1 MiB): a 101 MiB member
    # of zeros (a sparse file here) compresses to a few KiB and passes it.
    zeros = tmp_path / "zeros"
    with open(zeros, "wb") as fh:
        fh.truncate(101 << 20)
    archive = tmp_path / "bomb.tar.zst"
    with tarfile.open(tmp_path / "bomb.tar", "w") as tar:
        tar.add(zeros, arcname="zeros")
    subprocess.run(["zstd", "-q", "-f", str(tmp_path / "bomb.tar"), "-o", str(archive)], check=True)
    with pytest.raises(LssdError, match=r"100 x the archive's size; the torrent records no unpacked size"):
        install.install(str(archive), dest, TAG)
    assert_nothing_left(dest)


def test_recorded_size_beyond_free_space_is_refused_before_extracting(dest, packed):
    made = packed("none")
    os.makedirs(dest)
    free = os.statvfs(dest).f_bavail * os.statvfs(dest).f_frsize
    with pytest.raises(LssdError) as err:
        install.install(made["archive"], dest, TAG, unpacked_size=free + 1)
    assert f"no space left to install {TAG}: {dest} has" in str(err.value)
    assert f"{free + 1} are needed" in str(err.value)
    assert_nothing_left(dest)


def test_bad_unpacked_size(dest, packed):
    with pytest.raises(LssdError, match=r"unpacked_size 'lots' must be a number of bytes"):
        install.install(packed("none")["archive"], dest, TAG, unpacked_size="lots")
