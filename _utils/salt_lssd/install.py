"""Installing, the peer's last step: unpack a downloaded archive into ``destination_path/<tag>``.

The target appears complete or not at all. The archive is decompressed as a stream (``zstd -dc``,
``pigz -dc``/``gzip -dc``) straight into ``tarfile``'s stream reader, and every member is checked
and written by this module itself into a temporary directory beside the target (same parent, so
the final ``rename`` is atomic): names must be relative with no ``..``, nothing may be written
through a symlink, symlinks and hardlinks must stay inside the tree, devices and fifos are
refused. Files keep the archive's modes and mtimes; ``owner``/``group`` are applied to everything
(links themselves, never their targets) and ``mode`` to the target directory only. A non-empty
target is only replaced with ``unsafe_please_delete`` (Murder's rule): the old tree is renamed
aside, the new one renamed in, and only then is the old one deleted; if the swap fails the old
tree is put back. Nothing outside the target is ever deleted. A tree-mode download
(``install_tree``) goes through the same checks and the same temporary tree: its manifest
entries stand for the archive's members, and its files are moved in once they match.

``tarfile``'s own extraction filters are not used: the ``data`` filter rewrites modes (which
must stay byte-identical) and the others do not check enough; the checks here do not depend on
the Python version.
"""

import errno
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading

from salt_lssd import LssdError
from salt_lssd.common import fsync_dir, validate_tag
from salt_lssd.pack import (
    CHUNK,
    check_compression,
    compression_of,
    link_escapes,
    tool_command,
)

# Mode of the target directory when neither ``mode`` nor the archive's root entry says.
DEFAULT_MODE = 0o755
# Without the unpacked size recorded in the torrent (older torrents), extraction stops at this
# many times the archive's size: far above any real build's ratio, far below a zstd bomb's.
BOMB_RATIO = 100

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _resolve_id(value, kind):
    """uid/gid for an owner/group given as a name or a numeric id; -1 (leave as is) for None."""
    lookup = pwd.getpwnam if kind == "owner" else grp.getgrnam
    database = "user" if kind == "owner" else "group"
    if value is None or value == "":
        return -1
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LssdError(f"{kind} {value!r} must be a {database} name or a numeric id")
    if isinstance(value, int) or value.isdigit():
        number = int(value)
        if number < 0 or number >= 2**32 - 1:
            raise LssdError(f"{kind} {value!r} is not a valid numeric id")
        # A numeric id needs no entry in the database (containers, NSS-less hosts).
        return number
    try:
        entry = lookup(value)
    except KeyError:
        raise LssdError(
            f"{kind} {value!r} is not a {database} on this host; give an existing {database} "
            "name or a numeric id"
        ) from None
    return entry.pw_uid if kind == "owner" else entry.gr_gid


def parse_mode(mode):
    """Permission bits from an octal string (``'0755'``, ``'755'``, ``'0o755'``) or an int
    (taken as the bits, e.g. ``0o755``); None stays None."""
    if mode is None or mode == "":
        return None
    allowed = "give an octal string such as '0755' (or an int such as 0o755)"
    if isinstance(mode, bool) or not isinstance(mode, (int, str)):
        raise LssdError(f"mode {mode!r} is not a mode; {allowed}")
    if isinstance(mode, str):
        digits = mode.strip()
        if digits[:2].lower() == "0o":
            digits = digits[2:]
        if not re.fullmatch(r"[0-7]{1,4}", digits):
            raise LssdError(f"mode {mode!r} is not an octal mode of at most 4 digits; {allowed}")
        value = int(digits, 8)
    else:
        value = mode
    if not 0 <= value <= 0o7777:
        raise LssdError(f"mode {mode!r} is out of range (0 to 0o7777); {allowed}")
    return value


def _check_destination(destination_path):
    if not isinstance(destination_path, (str, os.PathLike)) or not str(destination_path):
        raise LssdError(f"destination_path {destination_path!r} must be an absolute path")
    destination = os.fspath(destination_path)
    if not os.path.isabs(destination):
        raise LssdError(f"destination_path {destination!r} must be an absolute path")
    if "\0" in destination:
        raise LssdError(f"destination_path {destination!r} may not contain NUL")
    return os.path.normpath(destination)


def _check_file_name(file_name):
    if (
        not isinstance(file_name, str)
        or file_name in ("", ".", "..")
        or "/" in file_name
        or "\0" in file_name
        or len(os.fsencode(file_name)) > 255
    ):
        raise LssdError(f"file_name {file_name!r} must be a plain file name (not empty, '.' or '..', no '/')")
    return file_name


def _is_empty_dir(path):
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError as exc:
        raise LssdError(f"cannot read target {path!r}: {exc.strerror}") from exc


def _refuse_non_empty(target):
    what = "is not empty" if os.path.isdir(target) and not os.path.islink(target) else "exists"
    raise LssdError(
        f"target {target!r} {what}; set unsafe_please_delete to replace it (everything in it is deleted)"
    )


def check(
    destination_path,
    tag,
    no_tag_directory=False,
    unsafe_please_delete=False,
    owner=None,
    group=None,
    mode=None,
    path_is_file=False,
    file_name=None,
):
    """Refuse now what :func:`install` would refuse, before anything is downloaded.

    Returns ``target`` (the directory install would make), ``uid`` and ``gid`` (-1: left as
    extracted) and ``mode`` (None: the archive's, else 0755).
    """
    validate_tag(tag)
    destination = _check_destination(destination_path)
    target = destination if no_tag_directory else os.path.join(destination, tag)
    if target == "/":
        raise LssdError(
            "destination_path '/' cannot be the target (no_tag_directory is set); "
            "install into a directory below it"
        )
    uid = _resolve_id(owner, "owner")
    gid = _resolve_id(group, "group")
    dir_mode = parse_mode(mode)
    if path_is_file and file_name is not None:
        _check_file_name(file_name)
    if not unsafe_please_delete and os.path.lexists(target) and not _is_empty_dir(target):
        _refuse_non_empty(target)
    return {"target": target, "uid": uid, "gid": gid, "mode": dir_mode}


# -- reading the archive ------------------------------------------------------------------------


class _StrictTarInfo(tarfile.TarInfo):
    """Stream reading that tells "the archive ended" from "the data ran out".

    tarfile stops quietly at a missing, short or garbled header once past the first member, so
    an uncompressed archive cut at a member boundary would "extract" as a smaller tree. Only the
    zero block that ends an archive may end it here.
    """

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(
                f"no valid header at byte {tarfile_.offset} ({exc}); the archive is truncated or corrupt"
            ) from None


class _HashingReader:
    def __init__(self, raw, digest):
        self.raw = raw
        self.digest = digest

    def read(self, size=-1):
        data = self.raw.read(size)
        if self.digest is not None:
            self.digest.update(data)
        return data


class _Feeder(threading.Thread):
    """Feeds the archive to the decompressor and hashes it on the way: one read of the file."""

    def __init__(self, raw, proc, digest):
        super().__init__(name="lssd-install-feed", daemon=True)
        self.raw = raw
        self.proc = proc
        self.digest = digest
        self.error = None
        self.start()

    def run(self):
        try:
            while True:
                block = self.raw.read(CHUNK)
                if not block:
                    break
                self.digest.update(block)
                self.proc.stdin.write(block)
        except BrokenPipeError:
            pass  # the decompressor stopped; the extracting thread reports why
        except BaseException as exc:  # noqa: BLE001 - handed to the extracting thread
            self.error = exc
            self.proc.kill()
        finally:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass


def _drain(stream):
    while stream.read(CHUNK):
        pass


def _member_kind(member):
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "fifo"
    return f"member of type {member.type!r}"


def _member_path(member):
    """The member's path relative to the tree (None for the tree's root entry)."""
    raw = member.name
    if "\0" in raw:
        raise LssdError(f"archive member {raw!r} has a NUL in its name; refused")
    if raw.startswith("/"):
        raise LssdError(
            f"archive member {raw!r} has an absolute path; only paths relative to the tree are installed"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LssdError(f"archive member {raw!r} contains '..'; it would be written outside the target")
    return "/".join(parts) or None


def _hardlink_source(member):
    raw = member.linkname
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or ".." in parts or not parts or "\0" in raw:
        raise LssdError(
            f"archive member {member.name!r} is a hardlink to {raw!r}, outside the target; refused"
        )
    return "/".join(parts)


class _Extractor:
    """Writes checked members below ``root``, which it owns (a fresh temporary directory)."""

    def __init__(self, root, uid, gid, max_bytes=None, cap_source=""):
        self.root = root
        self.uid = uid
        self.gid = gid
        self.max_bytes = max_bytes  # of regular files; past it extraction stops (a bomb)
        self.cap_source = cap_source
        self.kinds = {}  # relative path -> "dir" | "file" | "symlink"
        self.dirs = {}  # relative path -> (mode, mtime or None); applied once all is written
        self.symlinks = []
        self.files = 0
        self.bytes = 0
        self.root_mode = None
        self.root_mtime = None

    def _chown(self, path):
        if self.uid != -1 or self.gid != -1:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def _parents(self, name, member):
        """Make the member's missing parent directories; refuse to write through a non-directory."""
        parent = name.rpartition("/")[0]
        if not parent or self.kinds.get(parent) == "dir":
            return
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            kind = self.kinds.get(prefix)
            if kind == "dir":
                continue
            if kind is not None:
                raise LssdError(
                    f"archive member {member.name!r} would be written through the {kind} {prefix!r}; refused"
                )
            # Archives may omit directory entries; make them as tar does.
            path = os.path.join(self.root, prefix)
            os.mkdir(path, 0o700)
            self._chown(path)
            self.kinds[prefix] = "dir"
            self.dirs[prefix] = (DEFAULT_MODE, None)

    def add(self, tar, member):
        name = _member_path(member)
        if name is None:
            if not member.isdir():
                raise LssdError(f"archive member {member.name!r} is the tree's root but not a directory")
            self.root_mode = member.mode & 0o7777
            self.root_mtime = member.mtime
            return
        self._parents(name, member)
        path = os.path.join(self.root, name)
        if name in self.kinds:
            if member.isdir() and self.kinds[name] == "dir":
                self.dirs[name] = (member.mode & 0o7777, member.mtime)
                return
            raise LssdError(f"archive member {member.name!r} appears twice; refused")
        if member.isdir():
            os.mkdir(path, 0o700)
            self._chown(path)
            self.kinds[name] = "dir"
            self.dirs[name] = (member.mode & 0o7777, member.mtime)
        elif member.isreg():
            self._check_cap(member)
            self._file(tar, member, path)
            self.kinds[name] = "file"
            self.bytes += member.size
        elif member.issym():
            if link_escapes(name, member.linkname):
                raise LssdError(
                    f"archive member {member.name!r} is a symlink to {member.linkname!r}, "
                    "which points outside the target; refused"
                )
            os.symlink(member.linkname, path)
            self._chown(path)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            self.kinds[name] = "symlink"
            self.symlinks.append((name, member.linkname))
        elif member.islnk():
            source = _hardlink_source(member)
            if self.kinds.get(source) != "file":
                raise LssdError(
                    f"archive member {member.name!r} is a hardlink to {member.linkname!r}, which "
                    "is not a regular file earlier in the archive; refused"
                )
            os.link(os.path.join(self.root, source), path, follow_symlinks=False)
            self.kinds[name] = "file"
        else:
            raise LssdError(
                f"archive member {member.name!r} is a {_member_kind(member)}; only regular files, "
                "directories, symlinks and hardlinks are installed"
            )
        self.files += 1

    def _check_cap(self, member):
        # The header says how much is coming: refuse before writing a byte of it.
        if self.max_bytes is not None and self.bytes + member.size > self.max_bytes:
            raise LssdError(
                f"archive member {member.name!r} would bring the extracted size to "
                f"{self.bytes + member.size} bytes, past the cap of {self.max_bytes} bytes "
                f"({self.cap_source}); refused as a decompression bomb, nothing was installed"
            )

    def _file(self, tar, member, path):
        fd = os.open(path, _CREATE, 0o600)
        with open(fd, "wb") as out:
            source = tar.extractfile(member)
            shutil.copyfileobj(source, out, CHUNK)
            out.flush()
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
            # After chown, which clears set-uid/set-gid bits.
            os.fchmod(fd, member.mode & 0o7777)
            os.utime(fd, (member.mtime, member.mtime))

    def finish(self):
        real_root = os.path.realpath(self.root)
        # Each link was checked on its own; a chain of links (a -> .., b -> x/a/..) can still
        # leave the tree, so resolve them all now that the whole tree exists.
        for name, linkname in self.symlinks:
            real = os.path.realpath(os.path.join(self.root, name))
            if real != real_root and not real.startswith(real_root + "/"):
                raise LssdError(
                    f"archive member {name!r} is a symlink to {linkname!r}, which resolves outside "
                    "the target through other symlinks; refused"
                )
        # Deepest first, after everything is written: a read-only directory must not stop the
        # writes below it, and writing into a directory changes its mtime.
        for name in sorted(self.dirs, key=lambda n: n.count("/"), reverse=True):
            mode, mtime = self.dirs[name]
            path = os.path.join(self.root, name)
            os.chmod(path, mode)
            if mtime is not None:
                os.utime(path, (mtime, mtime))


def _extract_stream(stream, extractor):
    with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK, tarinfo=_StrictTarInfo) as tar:
        for member in tar:
            extractor.add(tar, member)
    extractor.finish()


def _corrupt(archive, exc, detail=""):
    return LssdError(f"archive {archive!r} is corrupt or truncated: {exc}{detail}")


def _extract_archive(archive, command, extractor, digest):
    with open(archive, "rb") as raw:
        if command is None:
            reader = _HashingReader(raw, digest)
            try:
                _extract_stream(reader, extractor)
            except (tarfile.TarError, EOFError) as exc:
                raise _corrupt(archive, exc) from exc
            if digest is not None:
                _drain(reader)  # the padding after the end-of-archive blocks is hashed too
            return
        with tempfile.TemporaryFile() as errors:
            # Without a hash to check, the decompressor reads the file itself.
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if digest is not None else raw,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            feeder = _Feeder(raw, proc, digest) if digest is not None else None
            try:
                try:
                    _extract_stream(proc.stdout, extractor)
                    _drain(proc.stdout)
                except BaseException as exc:
                    proc.kill()
                    if feeder is not None:
                        feeder.join()
                    proc.wait()
                    if isinstance(exc, (tarfile.TarError, EOFError)):
                        errors.seek(0)
                        said = errors.read(2000).decode("utf-8", "replace").strip()
                        raise _corrupt(
                            archive, exc, f" ({os.path.basename(command[0])}: {said})" if said else ""
                        ) from exc
                    raise
                if feeder is not None:
                    feeder.join()
                returncode = proc.wait()
            finally:
                proc.stdout.close()
            if feeder is not None and feeder.error is not None:
                raise LssdError(f"cannot read archive {archive!r}: {feeder.error}")
            if returncode != 0:
                errors.seek(0)
                said = errors.read(2000).decode("utf-8", "replace").strip() or "no message"
                raise _corrupt(
                    archive, f"{os.path.basename(command[0])} exited with {returncode}", f": {said}"
                )


def _install_file(archive, root, file_name, extractor, digest):
    """path_is_file: copy the archive (the file itself) to ``root/file_name``."""
    path = os.path.join(root, file_name)
    with open(archive, "rb") as src:
        fd = os.open(path, _CREATE, 0o600)
        with open(fd, "wb") as out:
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                if digest is not None:
                    digest.update(block)
                out.write(block)
            out.flush()
            if extractor.uid != -1 or extractor.gid != -1:
                os.fchown(fd, extractor.uid, extractor.gid)
            # The file keeps the permission bits of the archive file (as downloaded).
            os.fchmod(fd, stat.S_IMODE(os.fstat(src.fileno()).st_mode) & 0o777)
            extractor.bytes = out.tell()
    extractor.files = 1


# -- putting it in place ------------------------------------------------------------------------


def _make_writable(path):
    os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)


def _remove_tree(path):
    """Delete ``path`` (ours: a temporary or set-aside tree); never follows symlinks out of it."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except OSError:
        # Read-only directories stop a non-root user; root is never stopped by modes.
        _make_writable(path)
        shutil.rmtree(path)


def _syncfs_function():
    try:
        import ctypes  # pylint: disable=import-outside-toplevel

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return None


def _write_back(path):
    """Put the new tree's data on disk before the rename makes it the target.

    Without this a power cut can leave a target that exists with empty or short files in it
    (the rename reaches the journal before delayed data blocks do), and the peer's record says
    the tag is installed. syncfs(2) flushes only the target's filesystem; one call for the whole
    tree costs what writing it costs, where an fsync per file would cost a flush per file.
    """
    syncfs = _syncfs_function()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _move_into_place(tmp, target, tag, unsafe_please_delete):
    """Rename ``tmp`` to ``target``; return whether something was there before."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return False
    if _is_empty_dir(target):
        os.rename(tmp, target)  # rename(2) replaces an empty directory atomically
        return True
    if not unsafe_please_delete:
        _refuse_non_empty(target)  # it was filled since check()
    aside = os.path.join(os.path.dirname(target), f".{tag}.lssd-old-{secrets.token_hex(6)}")
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException as exc:
        try:
            os.rename(aside, target)
        except OSError as back:
            raise LssdError(
                f"cannot rename the new tree to {target!r} ({exc}), nor the previous tree back "
                f"({back}): the previous tree is at {aside!r}"
            ) from exc
        raise
    try:
        _remove_tree(aside)
    except OSError:
        # The new tree is in place, which is what was asked; a leftover ".<tag>.lssd-old-*"
        # beside it is not worth failing the install for.
        pass
    return True


def _reader(archive, tag, compression, path_is_file, file_name):
    """(absolute archive path, decompress command or None, installed file name) for install."""
    if not isinstance(archive, (str, os.PathLike)) or not os.path.isfile(archive):
        raise LssdError(f"archive {archive!r} does not exist or is not a regular file")
    archive = os.path.abspath(os.fspath(archive))
    if not path_is_file:
        compression = compression_of(archive) if compression is None else check_compression(compression)
        return archive, tool_command(compression, decompress=True), file_name
    check_compression(compression, path_is_file=True)
    if file_name is None:
        base = os.path.basename(archive)
        file_name = base[len(tag) + 2 :] if base.startswith(f"{tag}--") else base
    _check_file_name(file_name)
    return archive, None, file_name


def _finish_tree(tmp, extractor, mode):
    """Owner, mode and mtime of the extracted tree's top, then everything flushed to disk."""
    extractor._chown(tmp)
    if mode is None:
        mode = extractor.root_mode if extractor.root_mode is not None else DEFAULT_MODE
    os.chmod(tmp, mode)
    if extractor.root_mtime is not None:
        os.utime(tmp, (extractor.root_mtime, extractor.root_mtime))
    _write_back(tmp)


def _make_parent(target):
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, mode=DEFAULT_MODE, exist_ok=True)
    except OSError as exc:
        raise LssdError(f"cannot create a directory in {parent!r}: {exc.strerror}") from exc
    return parent


def _into_place(fill, plan, tag, unsafe_please_delete, what):
    """A temporary tree beside the target, filled by ``fill(tmp)`` (which returns its
    extractor), finished and renamed into place; removed, and nothing installed, on failure.
    Returns (extractor, whether something was at the target before)."""
    target = plan["target"]
    parent = os.path.dirname(target)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{tag}.lssd-tmp-", dir=parent)
    except OSError as exc:
        raise LssdError(f"cannot create a directory in {parent!r}: {exc.strerror}") from exc
    try:
        try:
            extractor = fill(tmp)
            _finish_tree(tmp, extractor, plan["mode"])
            replaced = _move_into_place(tmp, target, tag, unsafe_please_delete)
            fsync_dir(parent)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise LssdError(f"no space left to install into {target!r}") from exc
            raise LssdError(f"cannot install {what!r} into {target!r}: {exc}") from exc
    except BaseException:
        try:
            _remove_tree(tmp)
        except OSError:
            pass
        raise
    return extractor, replaced


def _size_cap(archive, unpacked_size, parent, tag):
    """(cap on extracted bytes, what it comes from), after checking ``parent`` has room."""
    if unpacked_size is not None:
        try:
            unpacked_size = int(unpacked_size)
        except (TypeError, ValueError):
            raise LssdError(f"unpacked_size {unpacked_size!r} must be a number of bytes") from None
        fs = os.statvfs(parent)
        free = fs.f_bavail * fs.f_frsize
        if unpacked_size > free:
            raise LssdError(
                f"no space left to install {tag}: {parent} has {free} bytes free, "
                f"{unpacked_size} are needed (the unpacked size the seeder recorded)"
            )
        return unpacked_size, "the unpacked size the seeder recorded in the torrent"
    size = os.path.getsize(archive)
    return max(size, 1 << 20) * BOMB_RATIO, f"{BOMB_RATIO} x the archive's size; the torrent records no unpacked size"


def install(
    archive,
    destination_path,
    tag,
    compression=None,
    no_tag_directory=False,
    unsafe_please_delete=False,
    owner=None,
    group=None,
    mode=None,
    path_is_file=False,
    file_name=None,
    sha256=None,
    unpacked_size=None,
):
    """Install ``archive`` as ``destination_path/<tag>``, atomically.

    archive
        The archive made by ``pack.pack`` (downloaded through the swarm).
    destination_path
        Absolute directory; created if missing.
    tag
        The deploy tag: the target is ``destination_path/<tag>``.
    compression
        ``none``, ``gzip`` or ``zstd``. Default: from the archive's suffix.
    no_tag_directory
        Install into ``destination_path`` itself (Murder). Default: False.
    unsafe_please_delete
        Replace a target that exists and is not an empty directory (Murder). Without it that
        is an error and the target is left untouched. Default: False.
    owner, group
        Names or numeric ids, applied to every installed file, directory and link (not to a
        link's target). Default: left as created (the user running the install).
    mode
        Mode of the target directory only ('0755' or 0o755); files and directories below it
        keep the archive's modes. Default: the archive's root directory mode, else 0755.
    path_is_file
        The archive is a single file (``pack(path_is_file=True)``), installed as
        ``target/<file_name>`` with the archive file's permission bits. Default: False.
    file_name
        With ``path_is_file``: the installed file's name. Default: the archive's name without
        its ``<tag>--`` prefix.
    sha256
        If given, the archive's SHA-256 is computed while it is read for extraction (one read
        of the file) and the install fails, leaving nothing behind, if it differs.
    unpacked_size
        Bytes of regular files the archive holds, as the seeder recorded them (the torrent's
        ``lssd`` dict). The destination must have that much free space, and extraction stops,
        leaving nothing behind, once it would write more. Default: no space check, and a cap
        of ``BOMB_RATIO`` x the archive's size.

    Returns ``target``, ``files`` (installed entries below the target), ``bytes`` (of regular
    files), ``replaced`` (something was at the target before) and ``sha256`` (None unless
    given and checked).
    """
    plan = check(
        destination_path,
        tag,
        no_tag_directory=no_tag_directory,
        unsafe_please_delete=unsafe_please_delete,
        owner=owner,
        group=group,
        mode=mode,
        path_is_file=path_is_file,
        file_name=file_name,
    )
    archive, command, file_name = _reader(archive, tag, compression, path_is_file, file_name)
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise LssdError(f"sha256 {sha256!r} is not a SHA-256 hex digest (64 hex digits)")
    digest = hashlib.sha256() if sha256 is not None else None
    target = plan["target"]
    parent = _make_parent(target)
    try:
        cap, cap_source = _size_cap(archive, unpacked_size, parent, tag)
    except OSError as exc:
        raise LssdError(f"cannot read {parent!r}: {exc.strerror}") from exc

    def fill(tmp):
        extractor = _Extractor(tmp, plan["uid"], plan["gid"], None if path_is_file else cap, cap_source)
        if path_is_file:
            _install_file(archive, tmp, file_name, extractor, digest)
        else:
            _extract_archive(archive, command, extractor, digest)
        if digest is not None and digest.hexdigest() != sha256.lower():
            raise LssdError(
                f"archive {archive!r} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()}; "
                "nothing was installed"
            )
        return extractor

    extractor, replaced = _into_place(fill, plan, tag, unsafe_please_delete, archive)
    return {
        "target": target,
        "files": extractor.files,
        "bytes": extractor.bytes,
        "replaced": replaced,
        "sha256": sha256.lower() if sha256 is not None else None,
    }


# -- tree mode ----------------------------------------------------------------------------------

_KINDS = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}


def _manifest_member(entry):
    """A manifest entry as the member the extractor checks and writes (the archive's rules)."""
    try:
        path, kind, mode, mtime = entry["path"], entry["kind"], int(entry["mode"]), int(entry["mtime"])
    except (KeyError, TypeError, ValueError):
        raise LssdError(f"manifest entry {entry!r} lacks path, kind, mode or mtime") from None
    if not isinstance(path, str) or kind not in _KINDS:
        raise LssdError(f"manifest entry {path!r} has kind {kind!r}; allowed: {', '.join(_KINDS)}")
    member = tarfile.TarInfo(path)
    member.type, member.mode, member.mtime = _KINDS[kind], mode, mtime
    if kind == "symlink":
        member.linkname = str(entry.get("target") or "")
    elif kind == "file":
        member.size = int(entry.get("size", -1))
        if member.size < 0 or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            raise LssdError(f"manifest entry {path!r} is a file without a size and SHA-256")
    return member


class _TreePlacer(_Extractor):
    """Builds the tree from the manifest: directories and symlinks as the archive's, and each
    file moved (renamed: same filesystem) from the download once its size and SHA-256 match."""

    def __init__(self, root, uid, gid, source):
        super().__init__(root, uid, gid)
        self.source = source
        self.sha256 = {}

    def _file(self, tar, member, path):
        rel = os.path.relpath(path, self.root)
        if member.size == 0:  # empty files are not torrent files: made here
            os.close(os.open(path, _CREATE, 0o600))
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            try:
                # O_NONBLOCK: a FIFO in the download opens at once, and _check refuses it.
                flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(os.path.join(self.source, rel), flags)
            except OSError as exc:
                raise LssdError(
                    f"file {rel!r} of the manifest is not in the download: {exc.strerror}"
                ) from exc
        try:
            self._check(fd, rel, member)
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-uid/set-gid bits
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        if member.size:
            os.rename(os.path.join(self.source, rel), path)

    def _check(self, fd, rel, member):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LssdError(f"{rel!r} in the download is not a regular file; nothing was installed")
        digest, size = hashlib.sha256(), 0
        while True:
            block = os.read(fd, CHUNK)
            if not block:
                break
            size += len(block)
            digest.update(block)
        expected = self.sha256[rel]
        if size != member.size or digest.hexdigest() != expected:
            raise LssdError(
                f"file {rel!r} has {size} bytes with SHA-256 {digest.hexdigest()}; the manifest says "
                f"{member.size} bytes with {expected}; nothing was installed"
            )

    def leftovers(self):
        """LssdError naming a file of the download that the manifest does not list."""
        for dirpath, _, filenames in os.walk(self.source):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.source)
                raise LssdError(f"{rel!r} is in the download but not in the manifest; nothing was installed")


def install_tree(source, manifest, destination_path, tag, no_tag_directory=False, unsafe_please_delete=False,
                 owner=None, group=None, mode=None):
    """Install a tree-mode download as ``destination_path/<tag>``, atomically.

    ``source`` is the directory libtorrent wrote (on the target's filesystem, the manifest
    already taken out of it); ``manifest`` is ``(root, entries)`` from ``tree.parse_manifest``.
    Every entry goes through the archive's checks (no absolute paths or '..', nothing
    written through a symlink, no link leaving the tree); each file must match its size and
    SHA-256, and a file the manifest does not list refuses the install. Options and result
    as for :func:`install` (``sha256`` None: the caller checked the manifest's).
    """
    plan = check(destination_path, tag, no_tag_directory=no_tag_directory,
                 unsafe_please_delete=unsafe_please_delete, owner=owner, group=group, mode=mode)
    root, entries = manifest

    def fill(tmp):
        placer = _TreePlacer(tmp, plan["uid"], plan["gid"], source)
        placer.root_mode, placer.root_mtime = int(root["mode"]) & 0o7777, int(root["mtime"])
        for entry in entries:
            member = _manifest_member(entry)
            if member.isreg():
                placer.sha256[_member_path(member)] = entry["sha256"]
            placer.add(None, member)
        placer.leftovers()
        placer.finish()
        return placer

    _make_parent(plan["target"])
    placer, replaced = _into_place(fill, plan, tag, unsafe_please_delete, source)
    return {"target": plan["target"], "files": placer.files, "bytes": placer.bytes, "replaced": replaced,
            "sha256": None}
