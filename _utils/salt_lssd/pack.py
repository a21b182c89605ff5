"""Packing, the seeder's first step: turn a build directory into the one archive a tag ships.

``pack()`` walks ``files_path`` in sorted order, skips excluded names, and streams a tar of it
through the compressor (``zstd``, ``pigz``/``gzip``, or none) into a temporary file beside the
final archive, hashing the compressed bytes as they are written; the file is renamed into place
only when complete. Members are ``./``-relative (``tar -C files_path -c .`` style, so plain
``tar -xf`` unpacks it too), keep their modes, mtimes, symlinks and empty directories, and carry
owner 0/``root`` so the archive does not depend on the build host's users: the same tree packs
to the same bytes (given the same compressor; pigz and gzip output differ). ``install.py`` is
the other half and refuses what this module never writes.

This module also owns the archive format shared with ``install.py``: compressions, suffixes,
the external (de)compressor commands and the rule for which symlinks may be shipped.
"""

import fnmatch
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import unicodedata

from salt_lssd import LssdError
from salt_lssd.common import atomic_output, ensure_dir, validate_tag

COMPRESSIONS = ("none", "gzip", "zstd")

# Measured with: bench/pack_throughput.py --size-mb 1024 --compressions none,gzip,zstd,zstd:1,zstd:9
# (and again with --install-dir /dev/shm), on a 2-core AMD EPYC VM shared with other jobs (load ~4;
# ranges are over three runs): 7111 files, half source-like text, half random bytes. pack = walk +
# tar + compress + SHA-256 + fsync; install = decompress + checked extraction + syncfs + rename.
#
#   compression      pack MB/s  pack CPU s  size ratio  install MB/s      the archive moved at
#                                                       tmpfs / disk      50 Mbit/s  1 Gbit/s  10 Gbit/s
#   none              210-327     2.6-4.1     1.007      388 / 160-231     173 s      8.7 s     0.9 s
#   gzip -6 (pigz)     25-38       48-50      0.642      171 / 99-118      110 s      5.5 s     0.6 s
#   gzip -6 (gzip)     15-17       53-56      0.642      142 / 65-88       110 s      5.5 s     0.6 s
#   zstd -3 -T0       119-180       7-8       0.643      402 / 83-121      110 s      5.5 s     0.6 s
#   zstd -1           132-206        6        0.663      341 / 72-99       114 s      5.7 s     0.6 s
#   zstd -9            26-39       26-30      0.628      179 / 58-64       108 s      5.4 s     0.5 s
#
# zstd (its default level 3, all cores) is the default: the same ratio as gzip -6 for 1/6 of the
# CPU and 4-5x the packing speed, and peers decompress it as fast as they extract a plain tar
# (402 vs 388 MB/s on tmpfs: extraction, not decompression, is the cost), so every peer pays
# nothing for it. It ships 36% fewer bytes, which is what a deploy waits for on 50 Mbit/s to
# 1 Gbit/s links (63 s less per GB at 50 Mbit/s, 3 s at 1 Gbit/s); only on 10 Gbit/s does "none"
# finish a one-hop deploy a few seconds per GB sooner, because packing then dominates (pass
# compression='none' there, or for already-compressed builds). gzip is kept for Murder-like
# .tgz habits; it needs pigz (lssd.setup installs it) to be tolerable. zstd -1 is within noise
# of -3 in time but 3% larger; -9 costs 4x the CPU for 2%.
DEFAULT_COMPRESSION = "zstd"

DEFAULT_EXCLUDE = [".git*", ".svn*"]

_SUFFIXES = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
# Read-only aliases a user may have from Murder (which ships a .tgz).
_SUFFIX_ALIASES = {".tgz": "gzip", ".tzst": "zstd"}

# For each compression, the programs that do it, in order of preference:
# (program, compress args, decompress args, package that provides it).
# -n: no name or timestamp in the gzip header, so the same tree gives the same archive.
# zstd -T0: one compression thread per core; its output does not depend on the thread count.
_TOOLS = {
    "gzip": (
        ("pigz", ["-c", "-n"], ["-dc"], "pigz"),
        ("gzip", ["-c", "-n"], ["-dc"], "gzip"),
    ),
    "zstd": (("zstd", ["-T0", "-q", "-c"], ["-q", "-dc"], "zstd"),),
}

# Big enough that Python's per-call overhead vanishes next to the copying and hashing.
CHUNK = 1 << 20


def check_compression(compression, path_is_file=False):
    """Return the compression name to use (the default for None); LssdError if not allowed."""
    if path_is_file:
        if compression not in (None, "none"):
            raise LssdError(
                f"compression {compression!r} cannot be used with path_is_file: the file is "
                "distributed as it is; use compression 'none' (or leave it unset)"
            )
        return "none"
    if compression is None:
        return DEFAULT_COMPRESSION
    if compression not in COMPRESSIONS:
        raise LssdError(f"compression {compression!r} is unknown; allowed: {', '.join(COMPRESSIONS)}")
    return compression


def archive_suffix(compression):
    """The file name suffix of an archive: ``.tar``, ``.tar.gz`` or ``.tar.zst``."""
    return _SUFFIXES[check_compression(compression)]


def compression_of(path):
    """The compression of an archive, from its file name suffix."""
    name = os.path.basename(str(path))
    for compression, suffix in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[1])):
        if name.endswith(suffix):
            return compression
    for suffix, compression in _SUFFIX_ALIASES.items():
        if name.endswith(suffix):
            return compression
    allowed = ", ".join(list(_SUFFIXES.values()) + list(_SUFFIX_ALIASES))
    raise LssdError(f"archive {str(path)!r} has no known suffix ({allowed}); pass compression=")


def tool_command(compression, decompress=False):
    """argv of the program that (de)compresses a stream from stdin to stdout; None for 'none'."""
    compression = check_compression(compression)
    if compression == "none":
        return None
    tools = _TOOLS[compression]
    for program, compress_args, decompress_args, _ in tools:
        found = shutil.which(program)
        if found:
            return [found] + (decompress_args if decompress else compress_args)
    # The last choice is the minimal one; the first is what lssd.setup installs.
    if len(tools) > 1:
        missing = "neither " + " nor ".join(t[0] for t in tools) + " found"
    else:
        missing = f"{tools[0][0]} not found"
    raise LssdError(f"{missing} on PATH: install the {tools[0][3]} package (lssd.setup does)")


def link_escapes(name, linkname):
    """True if a symlink at archive path ``name`` pointing to ``linkname`` leaves the tree.

    Resolved lexically from the link's directory: absolute targets and any ``..`` that climbs
    above the tree's root (even to come back into it) escape. Peers refuse such links, so the
    seeder refuses to pack them.
    """
    if not linkname or linkname.startswith("/") or "\0" in linkname:
        return True
    depth = len([p for p in name.split("/") if p not in ("", ".")]) - 1
    for part in linkname.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


def check_exclude(exclude, name="exclude"):
    """``exclude`` as a list of patterns (the default for None, a str as one pattern)."""
    if exclude is None:
        return list(DEFAULT_EXCLUDE)
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, (list, tuple)):
        raise LssdError(f"{name} {exclude!r} must be a list of patterns such as ['.git*', '*.log']")
    for pattern in exclude:
        if not isinstance(pattern, str) or not pattern:
            raise LssdError(f"{name} pattern {pattern!r} must be a non-empty string such as '.git*'")
    return list(exclude)


def _excluded(name, relpath, patterns):
    # Like tar --exclude: a pattern without '/' matches any one path component's name (so
    # '.git*' drops .git/ and .gitignore anywhere); one with '/' matches the relative path.
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(relpath, pattern.strip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _walk(root, patterns):
    """Relative paths below ``root``, parents first, then by path; excluded names are pruned."""
    found = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        directory = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            raise LssdError(f"cannot read directory {directory!r}: {exc.strerror}") from exc
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if _excluded(entry.name, rel, patterns):
                continue
            found.append(rel)
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)
    # Sorting by components makes the order a function of the tree alone (not of readdir), so
    # the same tree packs to the same bytes; a directory still precedes its contents.
    found.sort(key=lambda rel: rel.split("/"))
    return found


def _check_entry(files_path, rel, st):
    """LssdError if the tree holds something a peer would refuse to install."""
    path = os.path.join(files_path, rel)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if link_escapes(rel, target):
            raise LssdError(
                f"symlink {path!r} -> {target!r} points outside files_path; peers refuse links "
                "that leave the installed tree: make it relative and inside the tree, or exclude it"
            )
    elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise LssdError(
            f"{path!r} is a {_kind(st.st_mode)}; only regular files, directories and symlinks "
            "can be deployed: remove it or exclude it"
        )


def _kind(mode):
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISREG, "regular file"),
    ):
        if test(mode):
            return name
    return "special file"


# What libtorrent does with a file name in a torrent (other clients do alike): a control
# character becomes "_", an invisible formatting character (zero-width, bidirectional mark)
# or a backslash is dropped, bytes that are not UTF-8 become "_", and a name is cut to 240
# bytes. A peer would then write, or look for, another name than the seeder's.
MAX_TORRENT_NAME = 240
_CHAR_NAMES = {"\n": "newline", "\r": "carriage return", "\t": "tab", "\x7f": "delete"}


def check_torrent_name(name, directory):
    """LssdError naming ``name`` (one path component, as os.listdir gives it) and the
    ``directory`` that holds it, if BitTorrent clients cannot carry it as it is."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LssdError(
            f"file name {raw!r} in {directory} is not UTF-8 (byte 0x{raw[exc.start]:02x}); torrents carry "
            "UTF-8 names and BitTorrent clients rewrite others: rename it or exclude it"
        ) from None
    for char in name:
        what = _rewritten(char)
        if what:
            raise LssdError(
                f"file name {name!r} in {directory} contains {what}; BitTorrent clients rewrite such "
                "names: rename it or exclude it"
            )
    if len(raw) > MAX_TORRENT_NAME:
        raise LssdError(
            f"file name {name!r} in {directory} is {len(raw)} bytes long; BitTorrent clients cut names "
            f"to {MAX_TORRENT_NAME} bytes: rename it or exclude it"
        )


def _rewritten(char):
    """What ``char`` is, if BitTorrent clients drop or replace it in a file name."""
    category = unicodedata.category(char)
    if category == "Cc":
        return f"a control character ({_CHAR_NAMES.get(char) or f'U+{ord(char):04X}'})"
    if category == "Cf":
        label = " ".join(filter(None, (f"U+{ord(char):04X}", unicodedata.name(char, ""))))
        return f"an invisible formatting character ({label})"
    if char == "\\":
        return "a backslash"
    return None


def open_regular(path):
    """A read-only file descriptor of ``path``, which must be a regular file: anything else
    (FIFO, device, socket, symlink) raises LssdError naming what it is, and never blocks.
    The lstat refuses before any open; O_NONBLOCK makes a FIFO swapped in meanwhile open at
    once instead of waiting for a writer, O_NOFOLLOW refuses a symlink, and the fstat checks
    what was opened. (O_NONBLOCK changes nothing for a regular file's reads.) An unreadable
    path raises OSError."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        os.close(fd)
    raise LssdError(f"{path!r} is a {_kind(mode)}, not a regular file")


class _HashingWriter:
    """A file object that hashes what passes through it to ``out``."""

    def __init__(self, out):
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


class _Drain(threading.Thread):
    """Copies a compressor's stdout to the archive file and hashes it, beside the tar writer."""

    def __init__(self, proc, out):
        super().__init__(name="lssd-pack-drain", daemon=True)
        self.proc = proc
        self.out = out
        self.digest = hashlib.sha256()
        self.error = None
        self.start()

    def run(self):
        try:
            while True:
                block = self.proc.stdout.read(CHUNK)
                if not block:
                    break
                self.digest.update(block)
                self.out.write(block)
        except BaseException as exc:  # noqa: BLE001 - handed to the packing thread
            self.error = exc
            # Stop the compressor, or the tar writer blocks forever on a full pipe.
            self.proc.kill()


def _root_info(path):
    # The root entry carries the build directory's mode and mtime (install applies them to the
    # target when no mode is given). Followed if files_path is a symlink to a directory.
    st = os.stat(path)
    info = tarfile.TarInfo(".")
    info.type = tarfile.DIRTYPE
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = st.st_mtime
    return info


def _write_tar(sink, files_path, members):
    """Write the tar stream of ``members`` to ``sink``; return (member count, input bytes)."""
    count = 0
    input_bytes = 0
    with tarfile.open(
        fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK, copybufsize=CHUNK
    ) as tar:
        for rel in ["."] + members:
            path = files_path if rel == "." else os.path.join(files_path, rel)
            arcname = "." if rel == "." else "./" + rel
            try:
                # gettarinfo records inodes, so a second name of a hard-linked file becomes a
                # hardlink member instead of a second copy.
                if rel == ".":
                    info = _root_info(path)
                else:
                    info = tar.gettarinfo(path, arcname)
                # The tree was checked before writing; check again what is packed, in case the
                # build changed it meanwhile.
                if rel != "." and (
                    info is None
                    or not (info.isreg() or info.isdir() or info.issym() or info.islnk())
                    or (info.issym() and link_escapes(rel, info.linkname))
                ):
                    _check_entry(files_path, rel, os.lstat(path))
                    raise LssdError(f"{path!r} changed while it was packed; pack again")
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                # Whole seconds: a float mtime costs a pax header per member.
                info.mtime = int(info.mtime)
                if info.isreg():
                    with os.fdopen(open_regular(path), "rb") as fh:
                        tar.addfile(info, fh)
                    input_bytes += info.size
                else:
                    tar.addfile(info)
            except OSError as exc:
                if isinstance(exc, BrokenPipeError):
                    raise
                raise LssdError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
            if rel != ".":
                count += 1
    return count, input_bytes


def _write_compressed(command, out, files_path, members):
    """Tar into ``command``'s stdin; a thread writes its stdout to ``out``. Returns (sha256, counts)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        drain = _Drain(proc, out)
        try:
            try:
                counts = _write_tar(proc.stdin, files_path, members)
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        except BaseException as exc:
            proc.kill()
            drain.join()
            proc.wait()
            if drain.error is not None:
                raise LssdError(f"cannot write the archive: {_describe(drain.error)}") from exc
            if isinstance(exc, BrokenPipeError):
                raise LssdError(
                    f"{os.path.basename(command[0])} stopped early (exit {proc.returncode}): {_stderr(errors)}"
                ) from exc
            raise
        drain.join()
        returncode = proc.wait()
        if drain.error is not None:
            raise LssdError(f"cannot write the archive: {_describe(drain.error)}")
        if returncode != 0:
            raise LssdError(f"{os.path.basename(command[0])} failed (exit {returncode}): {_stderr(errors)}")
        return drain.digest.hexdigest(), counts


def _describe(exc):
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _stderr(errors):
    errors.seek(0)
    text = errors.read(4096).decode("utf-8", "replace").strip()
    return text or "no message"


def _check_paths(files_path, archive_dir, path_is_file):
    if not isinstance(files_path, (str, os.PathLike)) or not str(files_path):
        raise LssdError(f"files_path {files_path!r} must be a path")
    files_path = os.path.abspath(os.fspath(files_path))
    if not os.path.exists(files_path):
        raise LssdError(f"files_path {files_path!r} does not exist")
    if path_is_file:
        if os.path.isdir(files_path):
            raise LssdError(
                f"files_path {files_path!r} is a directory, but path_is_file is set: "
                "path_is_file distributes one file; unset it to pack a directory"
            )
        if not os.path.isfile(files_path):
            raise LssdError(f"files_path {files_path!r} is not a regular file")
    elif not os.path.isdir(files_path):
        raise LssdError(
            f"files_path {files_path!r} is not a directory; set path_is_file to distribute one file"
        )
    if not isinstance(archive_dir, (str, os.PathLike)) or not str(archive_dir):
        raise LssdError(f"archive_dir {archive_dir!r} must be a path")
    archive_dir = os.path.abspath(os.fspath(archive_dir))
    if not path_is_file:
        real_tree = os.path.realpath(files_path)
        real_dir = os.path.realpath(archive_dir)
        if real_dir == real_tree or real_dir.startswith(real_tree.rstrip("/") + "/"):
            raise LssdError(
                f"archive_dir {archive_dir!r} is inside files_path {files_path!r}; "
                "the archive would pack itself"
            )
    return files_path, archive_dir


def _pack_file(files_path, archive_dir, tag):
    """path_is_file: the "archive" is a copy of the file, named ``<tag>--<basename>``.

    A copy, not a hardlink: a build step that rewrites the file in place would otherwise change
    the bytes being seeded after their SHA-256 was published. The copy is hashed as it is made.
    """
    file_name = os.path.basename(files_path)
    # The file's name is part of the torrent's (the archive's) name.
    check_torrent_name(file_name, os.path.dirname(files_path))
    archive = os.path.join(archive_dir, f"{tag}--{file_name}")
    try:
        mode = stat.S_IMODE(os.stat(files_path).st_mode) & 0o777
        # A symlinked files_path is followed once, here; what it names must be a regular file
        # (a FIFO would block the copy until something writes to it).
        source = os.fdopen(open_regular(os.path.realpath(files_path)), "rb")
        with source as src, atomic_output(archive, mode, prefix=f".{tag}.") as out:
            sink = _HashingWriter(out)
            shutil.copyfileobj(src, sink, CHUNK)
            size = out.tell()
    except OSError as exc:
        raise LssdError(f"cannot copy {files_path!r} to {archive!r}: {_describe(exc)}") from exc
    return {
        "archive": archive,
        "size": size,
        "sha256": sink.digest.hexdigest(),
        "compression": "none",
        "files": 1,
        "input_bytes": size,
        "file_name": file_name,
    }


def pack(files_path, archive_dir, tag, compression=None, exclude=None, path_is_file=False):
    """Pack ``files_path`` into ``<archive_dir>/<tag><suffix>`` and return what was made.

    files_path
        The build directory (or, with ``path_is_file``, the one file) to distribute.
    archive_dir
        Where the archive goes; created if missing. Must not be inside ``files_path``.
    tag
        The deploy tag; the archive is named after it.
    compression
        ``none`` (``.tar``), ``gzip`` (``.tar.gz``, pigz when on PATH) or ``zstd``
        (``.tar.zst``). Default: ``DEFAULT_COMPRESSION``.
    exclude
        fnmatch patterns; one without ``/`` matches any path component's name (``.git*``
        drops ``.git/`` and ``.gitignore`` anywhere), one with ``/`` the path relative to
        ``files_path``. Default: ``DEFAULT_EXCLUDE``; ``[]`` excludes nothing.
    path_is_file
        Distribute the file ``files_path`` as it is (Murder's option): no tar, no compression;
        the archive is a copy named ``<archive_dir>/<tag>--<basename>``. Default: False.

    Returns ``archive`` (absolute path), ``size`` and ``sha256`` of the archive,
    ``compression``, ``files`` (members below the root), ``input_bytes`` (bytes of regular
    files packed) and ``file_name`` (the basename with ``path_is_file``, else None).

    A failure leaves no partial archive: it is written to a temporary file beside the target
    name and renamed into place when complete. Symlinks that leave the tree, devices, fifos
    and sockets are refused here, since every peer would refuse them.
    """
    validate_tag(tag)
    compression = check_compression(compression, path_is_file)
    patterns = check_exclude(exclude)
    files_path, archive_dir = _check_paths(files_path, archive_dir, path_is_file)
    command = tool_command(compression)
    ensure_dir(archive_dir)
    if path_is_file:
        return _pack_file(files_path, archive_dir, tag)

    members = _walk(files_path, patterns)
    if not members:
        raise LssdError(
            f"files_path {files_path!r} is empty"
            + (f" after excluding {patterns}" if patterns and os.listdir(files_path) else "")
            + "; there is nothing to deploy"
        )
    # Refuse what peers would refuse before writing anything.
    for rel in members:
        path = os.path.join(files_path, rel)
        try:
            _check_entry(files_path, rel, os.lstat(path))
        except OSError as exc:
            raise LssdError(f"cannot read {path!r}: {exc.strerror}") from exc

    archive = os.path.join(archive_dir, tag + archive_suffix(compression))
    # The SHA-256 is about to be published: atomic_output makes sure these bytes are on disk.
    with atomic_output(archive, prefix=f".{tag}.") as out:
        if command is None:
            sink = _HashingWriter(out)
            counts = _write_tar(sink, files_path, members)
            sha256 = sink.digest.hexdigest()
        else:
            sha256, counts = _write_compressed(command, out, files_path, members)
        size = out.tell()
    files, input_bytes = counts
    return {
        "archive": archive,
        "size": size,
        "sha256": sha256,
        "compression": compression,
        "files": files,
        "input_bytes": input_bytes,
        "file_name": None,
    }
