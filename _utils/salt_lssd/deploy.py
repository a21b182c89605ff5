"""Deploying one tag on a peer: find its torrent, download it through the swarm, install it.

The download runs in a detached process (``swarm``) that keeps seeding for ``linger``
seconds after it completes; the Salt job waits for it here, sending progress events, then
installs the archive (``install``: SHA-256 checked while extracting, in one read, and the
target renamed into place) and records the install (``inventory``). A tree-mode torrent
(the seeder's ``lssd:mode``) goes through ``tree_peer`` instead: the files are downloaded
beside the target and moved into place. Two jobs deploying the same tag on one minion are
serialized: the second finds the tag installed and does nothing.
"""

import fcntl
import os
import time

from salt_lssd import LssdError, NotPublished, credentials, install, inventory, mine, procs, tree_peer
from salt_lssd import torrent as metainfo
from salt_lssd.common import ensure_dir, validate_tag, write_atomic
from salt_lssd.settings import number

# What a progress event carries from the download process's state (plus size and ETA).
# The progress events a run may send the master per second, all its peers together.
RUN_EVENTS_PER_SECOND = 100
_PROGRESS_KEYS = ("progress", "download_rate", "upload_rate", "peers", "seeds", "total_done", "tracker_error")


def _from_mine(minion, tag, nonce=None, wait=True):
    """The mine entry for ``tag``. In an orchestrated run (pillar lssd:run_id) only that run's
    entry counts, never an earlier run's of the same tag; with ``wait`` it is awaited (the
    orchestrate starts the peers once it is registered, so they normally find it at once)."""
    run_id = minion.setting("run_id")
    if run_id and wait and nonce is None:
        return mine.await_torrent(minion, tag, run_id, minion.setting("job_timeout"))
    return mine.lookup_torrent(minion, tag, nonce, run_id=run_id)


def event_interval(progress_interval, run_peers):
    """Seconds between a peer's progress events: lssd:progress_interval, or longer in a run of
    many peers, so that a whole run's events reach the master at most
    ``RUN_EVENTS_PER_SECOND``, however large the fleet (each event is a request to a master
    worker)."""
    if not progress_interval or not run_peers:
        return progress_interval
    return max(progress_interval, run_peers / RUN_EVENTS_PER_SECOND)


def get_torrent(minion, tag, torrent=None, nonce=None):
    """(bytes, info) of the torrent for ``tag``: a path or ``salt://`` URL, else the mine."""
    if torrent is None:
        found = _from_mine(minion, tag, nonce)
        # An SSL torrent's certificate and key come with the entry, only to this deploy's hosts.
        found["info"]["credentials"] = found["entry"].get("credentials")
        return found["data"], found["info"]
    torrent = str(torrent)
    if torrent.startswith("salt://"):
        torrent = minion.cache_file(torrent)
    if not os.path.isfile(torrent):
        raise LssdError(f"torrent {torrent!r} is not a file")
    with open(torrent, "rb") as fh:
        data = fh.read()
    info = metainfo.read_torrent(data)
    info["credentials"] = credentials.beside(torrent) if info["ssl"] else None
    return data, info


def lookup(minion, tag, torrent=None, nonce=None, missing_ok=False, wait=False):
    """What a peer would download for ``tag``: info-hash, SHA-256, size, seeder, nonce. With
    ``wait``, an orchestrated run's entry is awaited (see ``_from_mine``)."""
    tag = validate_tag(tag)
    entry = {}
    try:
        if torrent is None:
            found = _from_mine(minion, tag, nonce, wait)
            info, entry = found["info"], found["entry"]
        else:
            info = get_torrent(minion, tag, torrent, nonce)[1]
    except NotPublished as exc:
        if not missing_ok:
            raise
        return {"tag": tag, "published": False, "comment": str(exc)}
    return {
        "tag": tag,
        "published": True,
        "infohash": info["infohash"],
        "sha256": info["lssd"].get("sha256"),
        "size": info["size"],
        "seeder": entry.get("seeder"),
        "nonce": entry.get("nonce"),
        "run_id": entry.get("run_id"),
    }


def install_options(minion, no_tag_directory=None, unsafe_please_delete=None, owner=None, group=None, mode=None):
    """The install options of a peer: arguments over pillar over defaults, each checked."""
    return {
        "no_tag_directory": minion.setting("no_tag_directory", no_tag_directory),
        "unsafe_please_delete": minion.setting("unsafe_please_delete", unsafe_please_delete),
        "owner": minion.setting("destination_owner", owner),
        "group": minion.setting("destination_group", group),
        "mode": minion.setting("destination_mode", mode),
    }


class _TagLock:
    """An exclusive lock per tag on this minion, held while the tag is deployed."""

    def __init__(self, layout, tag):
        ensure_dir(layout.locks)
        self.path = layout.lock(tag)

    def __enter__(self):
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def peer(minion, tag, **kwargs):
    """Download ``tag`` through the swarm, verify and install it; returns the summary.

    Events: ``lssd/peer/<tag>/start`` when the download starts, ``.../progress`` while it
    runs, ``.../complete`` with the summary, ``.../failed`` with the ``reason``. Each names
    the ``app`` and the orchestrate's ``run_id`` (None outside a run), so a listener tells
    apart two runs that deploy one tag; the install record keeps both too.
    """
    tag = validate_tag(tag)
    try:
        minion.settings.check_keys()
        return _peer(minion, tag, **kwargs)
    except Exception as exc:
        fire_failed(minion, tag, exc)
        raise


def fire_failed(minion, tag, exc, refused=False):
    """``lssd/peer/<tag>/failed`` with the ``reason``; ``refused``: before any byte moved."""
    try:
        validate_tag(tag)
    except LssdError:
        return  # no event tag can name it; the job's error does
    try:
        run = _run(minion)
    except LssdError:  # a bad app or run_id setting is the failure itself, not its label
        run = {"app": None, "run_id": None}
    minion.fire(f"lssd/peer/{tag}/failed", dict(run, tag=tag, reason=str(exc) or type(exc).__name__,
                                                refused=refused))


def _run(minion):
    """What every peer event and install record says of the run: ``app`` and ``run_id``."""
    return {"app": minion.app, "run_id": minion.setting("run_id")}


def _peer(minion, tag, destination_path=None, torrent=None, timeout=None, linger=None, nonce=None, **options):
    destination_path = minion.setting("destination_path", destination_path)
    timeout = minion.setting("timeout", timeout)
    linger = minion.setting("linger", linger)
    options = install_options(minion, **options)
    lt_settings = minion.setting("libtorrent_settings")
    with _TagLock(minion.layout, tag):
        done = inventory.installed(minion, tag)
        if not (done and done.get("target") == _target(destination_path, tag, options)):
            done = None
            # Refuse what install would refuse before a single byte moves.
            install.check(destination_path, tag, **options)
        data, info = get_torrent(minion, tag, torrent, nonce)
        meta = _check_torrent(tag, info)
        if done and done.get("sha256") == meta["sha256"]:
            # Another job installed this build while we waited for the lock.
            return dict(done, changed=False, comment=f"{tag} is already installed in {done['target']}")
        if done:  # another build of the tag is in place: checked only now that it is to be replaced
            install.check(destination_path, tag, **options)
        job = dict(data=data, info=info, meta=meta, destination_path=destination_path, timeout=timeout,
                   linger=linger, lt_settings=lt_settings, options=options)
        if meta.get("mode") == "tree":
            installed, state, seconds = tree_peer.run(minion, tag, **job)
        else:
            installed, state, seconds = _deploy_archive(minion, tag, **job)
    summary = dict(_summary(tag, info, meta, state, installed, linger), **_run(minion))
    summary["install_seconds"] = seconds
    inventory.record(minion, tag, summary)
    minion.fire(f"lssd/peer/{tag}/complete", summary)
    minion.refresh_grains()
    return dict(summary, changed=True, comment=f"deployed {tag} in {summary['target']}")


def _deploy_archive(minion, tag, data, info, meta, destination_path, timeout, linger, lt_settings, options):
    """Download the archive, then install it; returns (installed, download state, install seconds)."""
    run_dir, archive = _start_download(minion, tag, data, info, linger, timeout, lt_settings)
    fire_start(minion, tag, info)
    state = wait_for_download(minion, tag, run_dir, archive, timeout, info["size"])
    install_started = time.monotonic()
    try:
        installed = install.install(
            archive, destination_path, tag, compression=meta.get("compression"),
            path_is_file=bool(meta.get("path_is_file")), file_name=meta.get("file_name"),
            sha256=meta["sha256"], unpacked_size=meta.get("unpacked_size"), **options,
        )
    except Exception:
        procs.stop(run_dir)
        _remove(archive)
        raise
    return installed, state, round(time.monotonic() - install_started, 3)


def fire_start(minion, tag, info):
    event = dict(_run(minion), tag=tag, infohash=info["infohash"], size=info["size"])
    minion.fire(f"lssd/peer/{tag}/start", event)


def _target(destination_path, tag, options):
    return os.path.normpath(destination_path if options["no_tag_directory"] else os.path.join(destination_path, tag))


def _check_torrent(tag, info):
    meta = info["lssd"]
    if meta.get("tag") and meta["tag"] != tag:
        raise LssdError(f"torrent is for tag {meta['tag']!r}, not {tag!r}")
    if not meta.get("sha256"):
        raise LssdError("torrent carries no archive SHA-256 (not made by lssd.create_torrent)")
    return meta


def _start_download(minion, tag, data, info, linger, timeout, lt_settings):
    """Start (or rejoin) the detached download of ``info``; returns (run_dir, archive).

    A partial archive of an earlier attempt at the same info-hash is kept: libtorrent checks
    it and downloads only the pieces that do not match. One of another info-hash under this
    tag is removed first.
    """
    layout = minion.layout
    run_dir = layout.run_dir("peer", tag)
    archive = os.path.join(ensure_dir(layout.downloads), info["name"])
    current = procs.state(run_dir)
    if current["running"] and procs.read_config(run_dir).get("infohash") != info["infohash"]:
        procs.stop(run_dir)
        current = procs.state(run_dir)
    if not current["running"]:
        _drop_other_build(layout, tag, info)
        _check_space(layout.downloads, info["size"] - _allocated(archive), f"the download of {tag}")
        write_atomic(layout.torrent(tag), data)
        config = {
            "torrent": layout.torrent(tag),
            "save_path": layout.downloads,
            "tag": tag,
            "infohash": info["infohash"],
            "linger": linger,
            "timeout": timeout,
            "listen": minion.setting("listen"),
            "settings": lt_settings,
        }
        config.update(_ssl_files(minion, tag, info, run_dir))
        procs.spawn("peer", run_dir, config)
    return run_dir, archive


def _ssl_files(minion, tag, info, run_dir):
    """``ssl_cert``/``ssl_key`` for the download process of an SSL torrent: the deploy's
    credentials from the mine entry, or those of a seeder on this very minion."""
    if not info.get("ssl"):
        return {}
    creds = info.get("credentials") or credentials.beside(minion.layout.torrent(tag))
    if not creds:
        raise LssdError(
            f"the torrent of {tag} is an SSL torrent and no certificate for it reached this minion: "
            "take the torrent from the mine (no torrent=), and check that pillar lssd:targets:peer "
            "on the seeder matches this minion"
        )
    paths = credentials.install(run_dir, creds["cert"], creds["key"])
    return {"ssl_cert": paths["cert_path"], "ssl_key": paths["key_path"], "ssl_dh": paths["dh_path"]}


def _summary(tag, info, meta, state, installed, linger):
    seconds = state.get("seconds") or round(time.time() - state.get("started", time.time()), 3)
    from_seeder, from_peers = state.get("from_seeder", 0), state.get("from_peers", 0)
    return {
        "tag": tag,
        "mode": meta.get("mode") or "archive",
        "target": installed["target"],
        "sha256": meta["sha256"],
        "infohash": info["infohash"],
        "bytes": info["size"],
        "seconds": seconds,
        "rate": round(info["size"] / seconds) if seconds else None,
        "from_seeder": from_seeder,
        "from_peers": from_peers,
        # Bytes this peer already held (a resumed archive; files of other tags in tree mode),
        # and the bytes that came over the wire.
        "reused": state.get("reused", 0),
        "downloaded": from_seeder + from_peers,
        "files": installed.get("files"),
        "replaced": installed.get("replaced", False),
        "lingering": linger,
    }


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _allocated(path):
    """Bytes ``path`` already holds on disk (a partial download is sparse), 0 if missing."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _check_space(directory, needed, what):
    """LssdError naming ``directory`` and the bytes missing if ``needed`` bytes do not fit."""
    fs = os.statvfs(directory)
    free = fs.f_bavail * fs.f_frsize
    if needed > free:
        raise LssdError(
            f"no space left for {what}: {directory} has {free} bytes free, {needed} more are needed"
        )


def _drop_other_build(layout, tag, info):
    """Remove the partial archive of another info-hash for ``tag`` (a new build, same tag)."""
    try:
        with open(layout.torrent(tag), "rb") as fh:
            earlier = metainfo.read_torrent(fh.read())
    except (OSError, LssdError):
        return
    if earlier["infohash"] != info["infohash"]:
        _remove(os.path.join(layout.downloads, earlier["name"]))


def _failed(tag, state, status, run_dir, archive):
    """Why the download process ended without completing, from its last state or its end."""
    if status == "failed" and state.get("error"):
        return LssdError(f"download of {tag} failed: {state['error']}" + _kept(state, archive))
    if status not in (None, "starting", "downloading"):
        return LssdError(f"download of {tag} ended as {status!r} before it completed (lssd.peer_stop?)")
    ended = procs.vanished(run_dir)
    return LssdError(
        f"download process of {tag} (pid {state.get('pid', '?')}) {ended}" + _kept(state, archive)
    )


def _kept(state, archive):
    if archive is None:  # tree mode: the job removes the download directory
        return "; the partial download is removed"
    if state.get("corrupt"):
        return "; the partial archive was removed (its data cannot be trusted)"
    return "; the partial archive is kept: a retry resumes it"


def _timed_out(tag, state, timeout, archive):
    return LssdError(
        f"download of {tag} did not complete within {timeout:g}s "
        f"(at {state.get('progress', 0)}%, {state.get('peers', 0)} peers"
        + (f", tracker: {state['tracker_error']}" if state.get("tracker_error") else "")
        + ")" + _kept(state, archive)
    )


def _progress(state, size):
    """A progress event: the process's figures, the total size and an ETA at the current rate."""
    event = {k: state.get(k) for k in _PROGRESS_KEYS}
    rate, done = state.get("download_rate") or 0, state.get("total_done") or 0
    event.update(size=size, eta=round((size - done) / rate, 1) if rate > 0 and size else None)
    return event


def wait_for_download(minion, tag, run_dir, archive, timeout, size=None, until=("lingering", "done"),
                      deadline=None):
    """Poll the peer process until its status is one of ``until`` (it completed), at most
    ``timeout`` seconds (or until the monotonic ``deadline`` of a download waited for in
    steps); a progress event every progress_interval s. ``archive``: the partial download
    removed if corrupt (None in tree mode, where the caller removes it)."""
    progress_interval = event_interval(minion.setting("progress_interval"), minion.setting("run_peers"))
    run = _run(minion)
    deadline = deadline or time.monotonic() + number(timeout, "timeout", 1)
    next_event = 0.0 if progress_interval > 0 else float("inf")
    while True:
        state = procs.state(run_dir)
        if not state["running"]:
            state = procs.state(run_dir)  # its last words may have come after the first read
        status = state.get("status")
        if status in until:
            return state
        now = time.monotonic()
        # A process that is gone without "done" (killed, or its state could not be written)
        # has failed; one that never wrote its pidfile did too, once spawn's wait is over.
        failed = status == "failed" or not state["running"]
        if failed or now >= deadline:
            procs.stop(run_dir)
            if failed:
                error = _failed(tag, state, status, run_dir, archive)
            else:
                error = _timed_out(tag, state, timeout, archive)
            if state.get("corrupt") and archive:
                _remove(archive)
            raise error
        if now >= next_event and status == "downloading":
            minion.fire(f"lssd/peer/{tag}/progress", dict(_progress(state, size), **run))
            next_event = now + progress_interval
        # Every waiting job polls; Salt's processes share the cores with the swarm on small
        # hosts. Once a second until the end is near, then 5 Hz so completion is seen
        # promptly (the process reports it the moment it happens), and while a delta deploy
        # waits for the manifest alone (a few pieces: the files are placed once it is here).
        time.sleep(0.2 if "manifest" in until or (state.get("progress") or 0) >= 90 else 1.0)
