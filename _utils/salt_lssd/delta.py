"""Delta deploys: a peer places the files it already holds before a tree-mode download.

Other tags of the same app installed here, with the manifest kept beside their install
record, are the candidates: a map from each file's SHA-256 to where it is installed. No
record is trusted for content: a candidate is copied while it is hashed, and kept only when
its size and SHA-256 are what the new manifest wants, so a file changed on this host since
its install is not reused (it is downloaded). Copies, never hardlinks: the new tag must not
share inodes with a tag that may be changed or removed. The download process then counts the
placed files' pieces as had without reading them again (the manifest that named their
SHA-256 came through the torrent), and the install checks every file once more.
"""

import hashlib
import os
import time

from salt_lssd import LssdError, inventory, tree
from salt_lssd.pack import CHUNK, open_regular


def candidates(minion, tag):
    """``{sha256: [installed path, ...]}`` of the regular files of this app's other installed
    tags that kept a tree-mode manifest (newest install first)."""
    found = {}
    records = sorted(inventory.installed(minion).items(), key=lambda kv: -kv[1].get("installed", 0))
    for other, record in records:
        if other == tag:
            continue
        try:
            with open(minion.layout.installed_manifest(other), "rb") as fh:
                _, entries = tree.parse_manifest(fh.read(), record.get("sha256"))
        except (OSError, LssdError):
            continue  # an archive-mode install, or its manifest is gone or not the installed one
        for entry in entries:
            if entry.get("kind") == "file" and entry.get("size"):
                found.setdefault(entry["sha256"], []).append(os.path.join(record["target"], entry["path"]))
    return found


def place(found, entries, tree_dir, deadline=None):
    """Copy into ``tree_dir`` each file of ``entries`` a candidate holds with the same content,
    until the monotonic ``deadline`` (what is not placed by then is downloaded, and the
    download's own wait ends at the same deadline); returns (paths placed, bytes placed)."""
    paths, placed = [], 0
    for entry in entries:
        if entry.get("kind") != "file" or not entry.get("size"):
            continue
        if deadline is not None and time.monotonic() >= deadline:
            break
        dest = os.path.join(tree_dir, _relative(entry["path"]))
        for source in found.get(entry["sha256"], ()):
            if _copy_if_same(source, dest, entry["size"], entry["sha256"]):
                paths.append(entry["path"])
                placed += entry["size"]
                break
    return paths, placed


def _relative(path):
    """``path`` if it stays inside the tree. Placing runs before the install's own checks of
    the manifest, so it refuses what they refuse rather than write outside the staging tree."""
    if not isinstance(path, str) or "\0" in path or path.startswith("/") or ".." in path.split("/"):
        raise LssdError(f"manifest entry {path!r} is not a path inside the tree; nothing was installed")
    return path


def _copy_if_same(source, dest, size, sha256):
    """Copy ``source`` to ``dest`` hashing it on the way (one read); keep the copy only if it
    has ``size`` bytes with ``sha256``. Unreadable candidates are skipped."""
    try:
        # A held file that is no longer a regular file (a FIFO or device put in its place) is
        # not reused: opening a FIFO for reading would wait for a writer that never comes.
        src = open_regular(source)
    except (OSError, LssdError):
        return False
    try:
        if os.fstat(src).st_size != size:
            return False
        os.makedirs(os.path.dirname(dest), 0o700, exist_ok=True)
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            while True:
                block = os.read(src, CHUNK)
                if not block:
                    break
                digest.update(block)
                out.write(block)
        if digest.hexdigest() == sha256 and os.path.getsize(dest) == size:
            return True
    except OSError:
        pass
    finally:
        os.close(src)
    try:
        os.unlink(dest)
    except OSError:
        pass
    return False
