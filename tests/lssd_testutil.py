"""Helpers the test layers share: a build-like tree and a comparable picture of a tree."""

import hashlib
import os
import socket
import stat

# Paths make_build_tree creates that DEFAULT_EXCLUDE ('.git*', '.svn*') drops.
EXCLUDED = {
    ".git",
    ".git/HEAD",
    ".git/objects",
    ".git/objects/ab",
    ".git/objects/ab/cdef",
    ".gitignore",
    "lib/pkg/.gitattributes",
    "lib/.svn",
    "lib/.svn/entries",
}


def tree_manifest(root):
    """``{relpath: (type, mode, sha256 | link target | None)}`` for everything below ``root``.

    ``type`` is ``dir``, ``file``, ``symlink`` or ``other``; ``mode`` the permission bits
    (``S_IMODE`` of lstat); the third field is the content's SHA-256 for files, the link target
    for symlinks and None for the rest. ``root`` itself is not listed.
    """
    root = os.fspath(root)
    manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                manifest[rel] = ("symlink", mode, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                manifest[rel] = ("dir", mode, None)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                manifest[rel] = ("file", mode, digest.hexdigest())
            else:
                manifest[rel] = ("other", mode, None)
    return manifest


def _write(root, rel, data, mode=0o644):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def make_build_tree(root, data_mb=3, seed=b"lssd"):
    """A small build tree with everything packing must keep (and drop). Returns ``root``.

    Nested directories, an executable (0755), a 0640 file, relative symlinks to a file and to a
    directory, a hardlink, an empty directory, a name with a space and non-ASCII characters,
    ``.git/``, ``.gitignore``, ``.gitattributes`` deep in the tree and ``.svn/`` (see
    ``EXCLUDED``), and ``data_mb`` MB of incompressible data beside some compressible text.
    """
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    _write(root, "bin/app", b"#!/bin/sh\necho app\n", 0o755)
    _write(root, "conf/secret.conf", b"password = hunter2\n", 0o640)
    _write(root, "lib/pkg/__init__.py", b"")
    _write(root, "lib/pkg/mod.py", b"def f(x):\n    return x * 2\n" * 200)
    _write(root, "lib/pkg/sub/deep/er/leaf.txt", b"leaf\n", 0o600)
    _write(root, "lib/pkg/.gitattributes", b"* text=auto\n")
    _write(root, "lib/.svn/entries", b"12\n")
    _write(root, "docs/read me \u00fc.txt", "caf\u00e9\n".encode())
    _write(root, ".gitignore", b"*.pyc\n")
    _write(root, ".git/HEAD", b"ref: refs/heads/main\n")
    _write(root, ".git/objects/ab/cdef", b"\x78\x9c" * 10)
    os.symlink("app", os.path.join(root, "bin/app-link"))
    os.symlink("pkg", os.path.join(root, "lib/current"))
    os.symlink("../../bin/app", os.path.join(root, "lib/pkg/run"))
    os.makedirs(os.path.join(root, "var/empty"))
    os.chmod(os.path.join(root, "var"), 0o750)
    # Deterministic "random" bytes, so failures reproduce: SHA-256 in counter mode.
    blob = bytearray()
    counter = 0
    while len(blob) < data_mb * (1 << 20):
        blob += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    _write(root, "data/blob.bin", bytes(blob))
    os.link(os.path.join(root, "data/blob.bin"), os.path.join(root, "data/blob-hardlink.bin"))
    text = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))
    _write(root, "data/text.log", text)
    return root


def without(manifest, excluded=EXCLUDED):
    return {rel: entry for rel, entry in manifest.items() if rel not in excluded}


def lssd_processes(under):
    """(pid, cmdline) of live ``python -m salt_lssd`` processes whose arguments lie below ``under``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2 :][:1] in (b"Z", b"X"):
            continue
        # Below ``under`` as a path: /tmp/pytest-13 must not match /tmp/pytest-130's processes.
        prefix = os.path.join(str(under), "")
        if "salt_lssd" in args and any(a == str(under) or a.startswith(prefix) for a in args):
            found.append((int(entry), " ".join(args)))
    return found


def free_port():
    """A TCP port nobody listens on right now (for a tracker or a salt daemon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
