"""Making and reading the .torrent that names one deploy's archive (or, in tree mode, its files).

Torrents are BitTorrent v1 (BEP 3, so any standard client can join) and private (BEP 27: no
DHT, PEX or LSD; our tracker is the only source of peers). The .torrent travels to the peers
through the Salt mine, so its size is bounded: the piece size grows with the archive so the
piece hashes stay under ``MAX_PIECES * 20`` bytes.
"""

import hashlib
import os
import time

from salt_lssd import LssdError, __version__, bencode
from salt_lssd.common import write_atomic
from salt_lssd.tree import MANIFEST_NAME, PAD_DIR

# Small pieces spread fastest through a fresh swarm: a peer can serve a piece to others as
# soon as it has it, and the seeder's first copies reach more peers sooner. Measured on a
# 16-peer namespace swarm (bench/README.md): 64 KiB pieces finished ~50% sooner than
# 1 MiB ones, 4 MiB ones much later. bench/run (F=100 MiB, U=50 Mbit/s, with slices):
# 32 KiB against 64 KiB, efficiency 0.88 vs 0.81 at N=8 and 0.76 vs 0.61-0.72 at N=16 (seeder
# upload 1.11 / 1.26 vs 1.20 / 1.46 x F); 16 KiB (one block per piece) did no better than
# 32 KiB and doubles the HAVE messages again. The price is CPU per byte (a HAVE per piece to
# every neighbour): at N=32 the lab's 2 cores are saturated either way (0.49 vs 0.51).
MIN_PIECE_SIZE = 32 * 1024
# 8192 pieces x 20-byte SHA-1 = 160 KiB of hashes: the .torrent stays well under the 512 KiB
# we allow it in the mine. A 256 MiB archive still gets 32 KiB pieces.
MAX_PIECES = 8192


def piece_size_for(size):
    """The piece size for an archive of ``size`` bytes: a power of two >= MIN_PIECE_SIZE."""
    piece = MIN_PIECE_SIZE
    while (size + piece - 1) // piece > MAX_PIECES:
        piece *= 2
    return piece


def piece_size_for_files(sizes):
    """The piece size for a tree-mode torrent of files of ``sizes`` bytes, each starting a
    piece: the smallest power of two >= MIN_PIECE_SIZE whose pieces, counted per file, stay
    within MAX_PIECES, or past which a larger size saves no piece (a tree of more files than
    that). Larger pieces cost a tree little on the wire: pad bytes are never requested."""

    def count(piece):
        return sum(-(-size // piece) for size in sizes)

    piece = MIN_PIECE_SIZE
    while count(piece) > MAX_PIECES and count(piece * 2) < count(piece):
        piece *= 2
    return piece


def announce_url(host, port, passkey=None):
    """Announce URL of our tracker (``?passkey=<hex>`` with a passkey); built by the tracker's
    client module, which also derives the /slice URL from it, so the two cannot drift."""
    from salt_lssd.tracker import client  # the tracker package imports this module

    return client.announce_url(host, port, passkey)


def url_host(host):
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host.strip('[]')}]" if ":" in host else host


def check_announce_url(url):
    """``url`` if our tracker can answer it (see the tracker client's check_announce_url)."""
    from salt_lssd.tracker import client  # the tracker package imports this module

    return client.check_announce_url(url)


def make_torrent(archive, torrent_path, tracker, lssd=None, root_cert=None):
    """Hash ``archive`` and write a private v1 .torrent announcing ``tracker``.

    With ``root_cert`` (PEM) it is an SSL torrent: libtorrent connects its peers only over
    TLS with certificates signed by that authority (the info dictionary's ``ssl-cert``).

    ``lssd`` (tag, sha256, compression...) is kept in the torrent's top-level ``lssd`` key:
    outside the info dictionary, so it does not change the info-hash and other clients
    ignore it, and the archive's SHA-256 travels with the torrent wherever it goes.

    Returns ``{"torrent", "infohash", "piece_size", "pieces", "size"}``.
    """
    check_announce_url(tracker)
    size = os.path.getsize(archive)
    piece_size = piece_size_for(size)
    hashes = []
    with open(archive, "rb") as fh:
        while True:
            block = fh.read(piece_size)
            if not block:
                break
            hashes.append(hashlib.sha1(block).digest())
    info = {"length": size, "name": os.path.basename(archive), "piece length": piece_size,
            "pieces": b"".join(hashes), "private": 1}
    return _write(info, torrent_path, tracker, lssd, root_cert, size)


def make_tree_torrent(name, files, piece_size, torrent_path, tracker, lssd=None, root_cert=None, manifest=None):
    """Write a private multi-file v1 .torrent of ``files`` (``[(path, length, piece hashes)]``,
    path None for the manifest), each padded to a piece boundary by a BEP 47 pad file.

    ``manifest`` (the first file's bytes) may ride along in the top-level ``lssd-manifest``
    key, outside the info dictionary like ``lssd``: a peer then has it with the torrent (it
    checks it against ``lssd``'s SHA-256) instead of fetching it through the swarm first."""
    check_announce_url(tracker)
    listed, hashes = [], []
    for index, (path, length, pieces) in enumerate(files):
        parts = [MANIFEST_NAME] if path is None else path.split("/")
        listed.append({"length": length, "path": [p.encode("utf-8", "surrogateescape") for p in parts]})
        hashes.extend(pieces)
        pad = -length % piece_size
        if pad and index < len(files) - 1:
            listed.append({"attr": b"p", "length": pad, "path": [PAD_DIR.encode(), str(pad).encode()]})
    info = {"files": listed, "name": name, "piece length": piece_size, "pieces": b"".join(hashes),
            "private": 1}
    return _write(info, torrent_path, tracker, lssd, root_cert, sum(f[1] for f in files), manifest)


def _write(info, torrent_path, tracker, lssd, root_cert, size, manifest=None):
    if root_cert:
        info["ssl-cert"] = root_cert.encode("ascii") if isinstance(root_cert, str) else root_cert
    meta = {
        "announce": tracker,
        "created by": f"salt-lssd {__version__}",
        "creation date": int(time.time()),
        "info": info,
    }
    if lssd:
        meta["lssd"] = lssd
    if manifest is not None:
        meta["lssd-manifest"] = manifest
    write_atomic(torrent_path, bencode.encode(meta))
    return {
        "torrent": os.path.abspath(torrent_path),
        "infohash": hashlib.sha1(bencode.encode(info)).hexdigest(),
        "piece_size": info["piece length"],
        "pieces": len(info["pieces"]) // 20,
        "size": size,
    }


def _size_of(info):
    """(bytes of payload, files) of an info dictionary; pad files count for neither."""
    if b"files" not in info:
        return int(info[b"length"]), 1
    files = [f for f in info[b"files"] if b"p" not in f.get(b"attr", b"")]
    for entry in files:
        parts = [p.decode("utf-8") for p in entry[b"path"]]
        if not parts or any(p in ("", ".", "..") or "/" in p for p in parts):
            raise ValueError(f"file path {parts!r} is not a relative path")
    return sum(int(f[b"length"]) for f in files), len(files)


def read_torrent(data):
    """Parse .torrent bytes: a single-file torrent (archive mode) or a tree-mode one.

    Returns ``{"infohash", "name", "size", "files", "piece_size", "tracker", "lssd", "ssl",
    "manifest"}`` (``size``: payload bytes, pad files not counted; ``files``: 1 for a single
    file); ``lssd`` is what :py:func:`make_torrent` kept (str keys and values), or ``{}``;
    ``ssl`` whether it is an SSL torrent (peers need the deploy's certificate); ``manifest``
    the tree manifest's bytes the torrent carries (unchecked), or None.
    """
    try:
        meta = bencode.decode(data)
        info = meta[b"info"]
        name = info[b"name"].decode("utf-8")
        size, files = _size_of(info)
        piece_size = int(info[b"piece length"])
        tracker = meta.get(b"announce", b"").decode("utf-8")
        lssd = {
            k.decode("utf-8"): v.decode("utf-8") if isinstance(v, bytes) else v
            for k, v in meta.get(b"lssd", {}).items()
        }
        manifest = meta.get(b"lssd-manifest")
        if manifest is not None and not isinstance(manifest, bytes):
            raise TypeError("lssd-manifest is not a byte string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LssdError(f"not an lssd v1 .torrent: {exc}") from None
    if "/" in name or name in ("", ".", ".."):
        raise LssdError(f"torrent names file {name!r}; a single plain file name is required")
    return {
        "infohash": hashlib.sha1(bencode.encode(info)).hexdigest(),
        "name": name,
        "size": size,
        "files": files,
        "piece_size": piece_size,
        "tracker": tracker,
        "lssd": lssd,
        "ssl": b"ssl-cert" in info,
        "manifest": manifest,
    }
