"""The seeder role on a minion: pack a build, make its torrent, seed it, publish it.

``create_torrent`` packs ``seeder_files_path`` into one archive per tag (``pack``), or in tree
mode hashes its files where they are (``tree``), and makes the private .torrent naming our
tracker (``torrent``); ``seed_start`` runs the detached
libtorrent seeder (``swarm``) and publishes the torrent to the mine with a fresh nonce,
returning once the master holds it; ``seed_stop`` stops it and withdraws the entry.
"""

import functools
import os
import shutil
import time
import uuid
from urllib.parse import urlsplit

from salt_lssd import LssdError, NotPublished, credentials, inventory, mine, pack, procs, tree
from salt_lssd import torrent as metainfo
from salt_lssd.common import read_json, validate_tag, write_atomic, write_json_atomic

# In a seeder's run directory: the run its mine entry is published for.
_PUBLISHED_FOR = "published.json"
from salt_lssd.settings import number
from salt_lssd.tracker import client as tracker_client
from salt_lssd.tracker import new_passkey


def tracker_url(minion, tracker=None, passkey=None):
    """The announce URL, with ``passkey``: ``tracker`` (a URL or host[:port]), pillar
    lssd:tracker, or the address the tracker minion published to the mine. A URL that
    carries its own passkey keeps it."""
    if tracker is None:
        host = minion.setting("tracker:host")
        if host:
            return metainfo.announce_url(host, minion.setting("tracker:port"), passkey)
        tracker = mine.tracker_url(minion)
    tracker = str(tracker)
    if "://" in tracker:
        parts = urlsplit(metainfo.check_announce_url(tracker))
        if parts.query or parts.path != "/announce":
            return tracker
        return metainfo.announce_url(parts.hostname, parts.port or 80, passkey)
    host, _, port = tracker.rpartition(":") if tracker.count(":") == 1 else (tracker, "", "")
    return metainfo.announce_url(host or tracker, port or minion.setting("tracker:port"), passkey)


def _fails_with_event(func):
    """A seeder step that fails sends ``lssd/seeder/<tag>/failed`` naming the ``step`` and the
    ``reason``, as a failed peer sends ``lssd/peer/<tag>/failed``: a listener on the master
    learns of it without the job's return."""

    @functools.wraps(func)
    def wrapper(minion, tag, *args, **kwargs):
        try:
            return func(minion, tag, *args, **kwargs)
        except Exception as exc:
            _fire_failed(minion, tag, func.__name__, exc)
            raise

    return wrapper


def _fire_failed(minion, tag, step, exc):
    try:
        tag = validate_tag(tag)
        run = {"app": minion.app, "run_id": minion.setting("run_id")}
    except LssdError:
        return  # a bad tag, app or run_id is the failure itself: the job's error names it
    minion.fire(f"lssd/seeder/{tag}/failed", dict(run, tag=tag, step=step, reason=str(exc) or type(exc).__name__))


@_fails_with_event
def create_torrent(minion, tag, files_path=None, tracker=None, compression=None, exclude=None,
                   path_is_file=None, mode=None):
    """Pack the build of ``tag`` (or, in tree mode, hash its files) and make its torrent;
    returns what the torrent record keeps."""
    tag = validate_tag(tag)
    minion.settings.check_keys()
    files_path = minion.setting("seeder_files_path", files_path)
    path_is_file = minion.setting("path_is_file", path_is_file)
    compression = minion.setting("compression", compression)
    exclude = minion.setting("exclude", exclude)
    mode = minion.setting("mode", mode)
    if mode == "tree" and path_is_file:
        raise LssdError(
            "mode 'tree' ships a directory's files; path_is_file ships one file: use mode 'archive'"
        )
    # The passkey keeps the swarm's peer list from whoever lacks the torrent (see tracker).
    passkey = new_passkey()
    run_id = minion.setting("run_id")
    try:
        url = tracker_url(minion, tracker, passkey)
    except NotPublished:
        if not run_id:
            raise
        url = None  # the run's tracker starts beside us: it is awaited after packing
    layout = minion.layout
    started = time.time()
    if mode == "tree":
        packed = tree.build(files_path, layout.archives, metainfo.piece_size_for_files, exclude)
    else:
        packed = pack.pack(files_path, layout.archives, tag, compression=compression, exclude=exclude,
                           path_is_file=path_is_file)
    packed_at = time.time()
    if url is None:
        url = mine.wait_for(minion, run_id, minion.setting("job_timeout"), "the tracker's address",
                            lambda: tracker_url(minion, tracker, passkey))
    # After packing: a build that fails to pack leaves the credentials of the torrent before it.
    creds = credentials.make(layout.credentials(tag), tag) if minion.setting("ssl") else None
    root_cert = creds and creds["ca"]
    if mode == "tree":
        result = _make_tree_torrent(layout, tag, packed, url, root_cert)
    else:
        result = _make_archive_torrent(layout, tag, packed, url, root_cert, path_is_file, files_path)
    result.update(
        tag=tag,
        mode=mode,
        tracker=url,
        ssl=bool(creds),
        cert_path=creds and creds["cert_path"],
        key_path=creds and creds["key_path"],
        dh_path=creds and creds["dh_path"],
        pack_seconds=round(packed_at - started, 3),
        hash_seconds=round(time.time() - packed_at, 3),
    )
    write_json_atomic(layout.torrent_meta(tag), result)
    minion.fire(f"lssd/seeder/{tag}/torrent", {k: result[k] for k in ("tag", "infohash", "sha256", "size")})
    return dict(_shown(result), pruned=prune_builds(minion, tag))


def _made_here(layout):
    """The tags whose torrent this seeder made (a ``<tag>.json`` beside it), newest first."""
    try:
        names = [n for n in os.listdir(layout.torrents) if n.endswith(".json")]
    except FileNotFoundError:
        return []
    made = []
    for name in names:
        try:
            made.append((os.stat(os.path.join(layout.torrents, name)).st_mtime, validate_tag(name[: -len(".json")])))
        except (OSError, LssdError):
            continue  # gone meanwhile, or not a tag's record
    return [tag for _, tag in sorted(made, reverse=True)]


def _in_use(layout, tag):
    return any(procs.state(layout.run_dir(role, tag))["running"] for role in ("seeder", "peer"))


def prune_builds(minion, newest, keep=None, test=False):
    """Keep the archives and torrents of the ``keep`` tags made most recently in this app
    namespace (default lssd:keep, the count a peer keeps installed; unset: keep every one)
    and remove the older ones' archive, torrent and deploy key. ``newest`` (the tag made now)
    and any tag a running seeder or peer here serves are always kept. Returns the tags removed."""
    keep = minion.setting("keep", keep)
    if not keep:
        return []
    layout = minion.layout
    order = [newest] + [t for t in _made_here(layout) if t != newest]
    old = [t for t in order[keep:] if not _in_use(layout, t)]
    if test:
        return old
    for tag in old:
        # A peer's downloads of the tag are its own (lssd.prune and rm_tgz handle them).
        for path in inventory.archive_files(minion, tag):
            if os.path.dirname(path) != layout.downloads:
                os.unlink(path)
        shutil.rmtree(layout.credentials(tag), ignore_errors=True)
    return old


def _make_archive_torrent(layout, tag, packed, url, root_cert, path_is_file, files_path):
    lssd_meta = {
        "tag": tag,
        "sha256": packed["sha256"],
        "compression": packed["compression"],
        "path_is_file": int(path_is_file),
        # Peers check free space against it and stop extracting past it (a bomb).
        "unpacked_size": packed["input_bytes"],
    }
    if path_is_file:
        lssd_meta["file_name"] = os.path.basename(os.path.normpath(files_path))
    made = metainfo.make_torrent(packed["archive"], layout.torrent(tag), url, lssd=lssd_meta,
                                 root_cert=root_cert)
    return dict(packed, **made)


def _make_tree_torrent(layout, tag, built, url, root_cert):
    """The tree's torrent, refused before anything is seeded if its mine entry cannot fit. It
    carries the manifest too where the entry has room for it (a delta deploy's peers place
    files while their download process starts), else peers fetch the manifest through the
    swarm first. The manifest is kept beside the archives: the seeder serves it as the first file."""
    lssd_meta = {"tag": tag, "mode": "tree", "sha256": built["sha256"], "unpacked_size": built["input_bytes"],
                 "files": built["entries"]}
    for manifest in (built["manifest"], None):
        made = metainfo.make_tree_torrent(tag, built["files"], built["piece_size"], layout.torrent(tag), url,
                                          lssd=lssd_meta, root_cert=root_cert, manifest=manifest)
        with open(made["torrent"], "rb") as fh:
            data = fh.read()
        if manifest is not None and mine.fits(data):
            break
    else:
        mine.check_torrent_size(data, built["entries"])
    kept = os.path.join(layout.archives, f"{tag}{tree.MANIFEST_SUFFIX}")
    write_atomic(kept, built["manifest"])
    return dict(made, archive=None, root=built["root"], manifest=kept, sha256=built["sha256"],
                compression=None, files=built["entries"], input_bytes=built["input_bytes"], file_name=None,
                manifest_in_torrent=manifest is not None)


def _shown(meta):
    """What a job may return of a torrent record: the announce URL without its passkey (job
    returns land in the master's job cache and in orchestrate output)."""
    return dict(meta, tracker=tracker_client.shown(meta["tracker"])) if meta.get("tracker") else meta


def local_torrent(minion, tag):
    """What create_torrent recorded for ``tag`` here; LssdError if its files are gone."""
    layout = minion.layout
    meta = read_json(layout.torrent_meta(tag)) or {}
    # What is seeded: the archive, or in tree mode the manifest kept here and the tree itself.
    if meta.get("mode") == "tree":
        present = os.path.isfile(meta.get("manifest") or "") and os.path.isdir(meta.get("root") or "")
    else:
        present = os.path.isfile(meta.get("archive") or "")
    if not meta or not present or not os.path.isfile(layout.torrent(tag)):
        raise LssdError(f"no torrent for tag {tag!r} on this minion: run lssd.create_torrent {tag} first")
    return meta


def _seeding(minion, tag, infohash):
    run_dir = minion.layout.run_dir("seeder", tag)
    return procs.state(run_dir)["running"] and procs.read_config(run_dir).get("infohash") == infohash


def torrent_info(minion, tag):
    """The torrent made here for ``tag`` plus ``seeding``; None if there is none."""
    tag = validate_tag(tag)
    try:
        meta = local_torrent(minion, tag)
    except LssdError:
        return None
    seeding = _seeding(minion, tag, meta["infohash"])
    run_dir = minion.layout.run_dir("seeder", tag)
    nonce = procs.read_config(run_dir).get("nonce") if seeding else None
    published_for = _published_for(run_dir) if seeding else None
    published = seeding and is_published(minion, tag, nonce, published_for)
    return dict(_shown(meta), seeding=seeding, published=published, published_for=published_for)


def published(minion, tag):
    """The mine entry for ``tag`` while a seeder runs for it here, else None."""
    tag = validate_tag(tag)
    layout = minion.layout
    meta = read_json(layout.torrent_meta(tag)) or {}
    run_dir = layout.run_dir("seeder", tag)
    if not meta or not procs.state(run_dir)["running"]:
        return None
    with open(layout.torrent(tag), "rb") as fh:
        data = fh.read()
    entry = mine.torrent_entry(minion, tag, data, meta, procs.read_config(run_dir).get("nonce"),
                               _published_for(run_dir))
    if meta.get("ssl"):
        with open(meta["cert_path"]) as cert, open(meta["key_path"]) as key:
            entry["credentials"] = {"cert": cert.read(), "key": key.read()}
    return entry


def is_published(minion, tag, nonce, run_id=None):
    """Whether the master holds this seeding process's entry for ``tag``, for run ``run_id``."""
    entry = mine.read(minion, mine.torrent_alias(tag, minion.app), None, run_id, f"L@{minion.id}").get(minion.id)
    return isinstance(entry, dict) and entry.get("nonce") == nonce and entry.get("run_id") == run_id


def _published_for(run_dir):
    return (read_json(os.path.join(run_dir, _PUBLISHED_FOR)) or {}).get("run_id")


def _publish(minion, tag, run_dir, nonce, run_id, timeout):
    # lssd.published (the mine function) reads the run id from here, as it reads the nonce
    # from the process's config: what it publishes is what this seeder runs for. app= too:
    # the mine function must read the namespace this job seeds from.
    write_json_atomic(os.path.join(run_dir, _PUBLISHED_FOR), {"run_id": run_id})
    app = {"app": minion.app} if minion.app else {}
    mine.publish(minion, mine.torrent_alias(tag, minion.app), "lssd.published",
                 lambda entry: entry.get("nonce") == nonce and entry.get("run_id") == run_id,
                 number(timeout, "publish_timeout"), run_id=run_id, tag=tag, **app, **mine.readers(minion))


@_fails_with_event
def seed_start(minion, tag, publish=True, publish_timeout=60):
    """Seed ``tag`` from a detached process (a no-op if this build is seeded already)."""
    tag = validate_tag(tag)
    minion.settings.check_keys()
    lt_settings = minion.setting("libtorrent_settings")
    layout = minion.layout
    meta = local_torrent(minion, tag)
    run_id = minion.setting("run_id")
    run_dir = layout.run_dir("seeder", tag)
    current = procs.state(run_dir)
    if current["running"] and _seeding(minion, tag, meta["infohash"]):
        nonce = procs.read_config(run_dir).get("nonce")
        if not publish or is_published(minion, tag, nonce, run_id):
            return dict(current, changed=False, comment=f"already seeding {tag} (pid {current.get('pid')})")
        # Seeding, but the master does not hold the entry for this run (a new run of the same
        # build, whose peers wait for their run's entry, or an earlier publish timed out).
        _publish(minion, tag, run_dir, nonce, run_id, publish_timeout)
        return dict(current, changed=True, tag=tag, nonce=nonce, comment=f"{tag} published to the mine again")
    procs.stop(run_dir)  # an older build under the same tag, if any
    try:
        os.unlink(os.path.join(run_dir, _PUBLISHED_FOR))
    except FileNotFoundError:
        pass
    config = {
        "torrent": layout.torrent(tag),
        "save_path": os.path.dirname(meta["archive"]) if meta.get("archive") else layout.archives,
        "tree": _tree_files(meta),
        "tag": tag,
        "infohash": meta["infohash"],
        "nonce": uuid.uuid4().hex,
        "listen": minion.setting("listen"),
        "settings": lt_settings,
        "ssl_cert": meta.get("cert_path"),
        "ssl_key": meta.get("key_path"),
        "ssl_dh": meta.get("dh_path"),
    }
    started = procs.spawn("seeder", run_dir, config)
    started.update(changed=True, tag=tag, infohash=meta["infohash"], nonce=config["nonce"], comment=f"seeding {tag}")
    if publish:
        _publish(minion, tag, run_dir, config["nonce"], run_id, publish_timeout)
    minion.fire(f"lssd/seeder/{tag}/start", {"tag": tag, "app": minion.app, "infohash": meta["infohash"],
                                             "size": meta["size"], "nonce": config["nonce"], "run_id": run_id})
    return started


def _tree_files(meta):
    """Where the seeder of a tree-mode torrent reads each file: the build itself (no copy), and
    the manifest kept beside the archives. None in archive mode."""
    if meta.get("mode") != "tree":
        return None
    return {"root": meta["root"], "manifest": meta["manifest"]}


def seed_stop(minion, tag=None):
    """Stop seeding ``tag`` (every tag for None) and withdraw it from the mine."""
    run_dirs = minion.layout.run_dirs("seeder", tag)
    for _, each in run_dirs:
        minion.mine_delete(mine.torrent_alias(each, minion.app))
    stopped = procs.stop_each("seeder", run_dirs, tag)
    for each in stopped["stopped"]:
        minion.fire(f"lssd/seeder/{each}/stop", {"tag": each, "app": minion.app})
    return stopped
