"""Tree mode: a build shipped as its own files, one multi-file torrent, no archive.

``build()`` walks ``files_path`` with the packing rules (``pack``: the same order, excludes and
refusals) and hashes every regular file in one read: its SHA-256 for the manifest and the
SHA-1 of each of its pieces for the torrent. Files are piece-aligned (BEP 47 pad files after
each one), so a file's pieces depend on its own bytes alone: a file unchanged between two
builds has the same piece hashes, and a peer that already holds it only has to place it.

The manifest (every path with its kind, mode, mtime, size and SHA-256 or link target, empty
directories included) is the torrent's first file: the info-hash covers it, and it never has
to fit the mine. Only non-empty regular files travel as torrent files; directories, symlinks
and empty files are made from the manifest. ``install.install_tree`` is the other half.
"""

import concurrent.futures
import hashlib
import json
import os
import stat

from salt_lssd import LssdError, pack

MANIFEST_NAME = ".lssd-manifest.json"
# BEP 47 names pad files ".pad/<length>"; a build holding these names at its top would clash.
PAD_DIR = ".pad"
RESERVED = (MANIFEST_NAME, PAD_DIR)
MANIFEST_VERSION = 1
HASH_THREADS = min(8, os.cpu_count() or 1)
# Where a tag's manifest is kept outside the tree: <tag><suffix> beside the seeder's archives
# and beside a peer's install record (for delta deploys).
MANIFEST_SUFFIX = ".lssd-manifest.json"


def _zero_pad(block, piece_size):
    # The last piece of a file is completed by its pad file, whose bytes are zeros.
    return block + bytes(piece_size - len(block)) if len(block) < piece_size else block


def hash_file(path, size, piece_size, padded=True):
    """(sha256 hex, [piece SHA-1 digests]) of ``path`` in one read; LssdError if its size moved.
    ``padded``: a pad file follows (every file but the torrent's last), so the last piece is
    completed with zeros; the torrent's last piece is short instead."""
    digest = hashlib.sha256()
    pieces = []
    done = 0
    try:
        with os.fdopen(pack.open_regular(path), "rb", buffering=0) as fh:
            while True:
                block = fh.read(piece_size)
                if not block:
                    break
                done += len(block)
                digest.update(block)
                pieces.append(hashlib.sha1(_zero_pad(block, piece_size) if padded else block).digest())
    except OSError as exc:
        raise LssdError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    if done != size:
        raise LssdError(f"{path!r} changed while it was hashed ({size} bytes, then {done}); hash again")
    return digest.hexdigest(), pieces


def _entry(files_path, rel, st):
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    entry = {"path": rel, "kind": kind, "mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime)}
    if kind == "symlink":
        entry["target"] = os.readlink(os.path.join(files_path, rel))
    elif kind == "file":
        entry["size"] = st.st_size
    return entry


def scan(files_path, archive_dir, exclude=None):
    """The manifest entries of ``files_path`` (sha256 not yet filled) and its root's mode/mtime.
    ``archive_dir`` (where the seeder keeps the manifest) must not be inside the tree."""
    files_path, _ = pack._check_paths(files_path, archive_dir, False)
    patterns = pack.check_exclude(exclude)
    members = pack._walk(files_path, patterns)
    if not members:
        raise LssdError(f"files_path {files_path!r} is empty; there is nothing to deploy")
    entries = []
    for rel in members:
        if rel in RESERVED:
            raise LssdError(
                f"{os.path.join(files_path, rel)!r}: the name {rel!r} is reserved in tree mode "
                f"(reserved at the top: {', '.join(RESERVED)}); rename or exclude it, or use mode archive"
            )
        path = os.path.join(files_path, rel)
        # Every name travels in the torrent (directories too, as parts of their files' paths).
        pack.check_torrent_name(os.path.basename(rel), os.path.dirname(path))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise LssdError(f"cannot read {path!r}: {exc.strerror}") from exc
        pack._check_entry(files_path, rel, st)
        entries.append(_entry(files_path, rel, st))
    root = os.stat(files_path)
    return files_path, {"mode": stat.S_IMODE(root.st_mode), "mtime": int(root.st_mtime)}, entries


def manifest_bytes(root, entries):
    """The manifest as it is shipped: sorted keys, no spaces, entries in walk order."""
    data = {"version": MANIFEST_VERSION, "root": root, "entries": entries}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def build(files_path, archive_dir, piece_size_for, exclude=None):
    """Scan and hash the tree: what the torrent and its manifest are made of.
    ``piece_size_for`` gets the regular files' sizes (``torrent.piece_size_for_files``).

    Returns ``root`` (the absolute tree), ``manifest`` (bytes), ``sha256`` (of the manifest),
    ``piece_size``, ``files`` (``[(relative path or None for the manifest, length, [piece
    hashes])]`` in torrent order), ``entries`` (count) and ``input_bytes``.
    """
    files_path, root, entries = scan(files_path, archive_dir, exclude)
    regular = [e for e in entries if e["kind"] == "file"]
    total = sum(e["size"] for e in regular)
    piece_size = piece_size_for([e["size"] for e in regular])
    files = []
    last = ([e for e in regular if e["size"]] or [None])[-1]

    def hashed(entry):
        return hash_file(os.path.join(files_path, entry["path"]), entry["size"], piece_size, padded=entry is not last)

    # hashlib lets go of the GIL while it hashes: one thread per core hashes files side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        for entry, (sha256, pieces) in zip(regular, pool.map(hashed, regular)):
            entry["sha256"] = sha256
            if entry["size"]:
                files.append((entry["path"], entry["size"], pieces))
    manifest = manifest_bytes(root, entries)
    blocks = [manifest[i : i + piece_size] for i in range(0, len(manifest), piece_size)]
    manifest_pieces = [hashlib.sha1(_zero_pad(b, piece_size) if last else b).digest() for b in blocks]
    return {
        "root": files_path,
        "manifest": manifest,
        "sha256": hashlib.sha256(manifest).hexdigest(),
        "piece_size": piece_size,
        "files": [(None, len(manifest), manifest_pieces)] + files,
        "entries": len(entries),
        "input_bytes": total,
    }


def parse_manifest(data, sha256):
    """The manifest's entries and root from ``data``, after checking its SHA-256."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise LssdError(f"manifest has SHA-256 {actual}, the torrent says {sha256}; nothing was installed")
    try:
        manifest = json.loads(data)
        entries, root = manifest["entries"], manifest["root"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LssdError(f"manifest is not an lssd tree manifest: {exc}") from None
    if manifest.get("version") != MANIFEST_VERSION:
        raise LssdError(
            f"manifest version {manifest.get('version')!r} is not {MANIFEST_VERSION}; update salt-lssd"
        )
    return root, entries
