"""
Large-scale server deploys over BitTorrent: the minion side of salt-lssd.

One tracker, one seeder and any number of peers move a build as one archive per *tag*:

- tracker minion: :py:func:`tracker_start`, :py:func:`tracker_allow`, :py:func:`tracker_stop`
- seeder minion:  :py:func:`create_torrent`, :py:func:`seed_start`, :py:func:`seed_stop`
- peer minions:   :py:func:`peer` (download, verify, install), :py:func:`peer_stop`,
  :py:func:`rm_tgz`
- everywhere:     :py:func:`status`

The tracker, seeder and downloading peers run as detached processes that outlive the Salt job
that started them. Their pidfiles, archives and torrents live below ``state_dir`` (default
``<cachedir>/lssd``; set ``lssd:state_dir`` in the minion config or pillar to change it).

Defaults come from pillar (or minion config) under ``lssd:`` -- see ``pillar.example``.
This module is thin: the protocol and process code lives in the ``salt_lssd`` package.

:depends: libtorrent (Python bindings, 2.x); zstd and pigz command-line tools for compressed
    archives. ``state.apply lssd.setup`` installs them.
"""

import base64
import functools
import logging
import os
import sys
import time
import uuid

from salt.exceptions import CommandExecutionError

try:
    import salt_lssd
except ImportError:
    # Classic install (file_roots/gitfs + saltutil.sync_all): the package arrives in the
    # minion's extmods/utils beside this extmods/modules directory; in the repository it
    # sits in _utils beside _modules.
    _parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _candidate in (os.path.join(_parent, "utils"), os.path.join(_parent, "_utils")):
        if os.path.isdir(os.path.join(_candidate, "salt_lssd")) and _candidate not in sys.path:
            sys.path.append(_candidate)
    try:
        import salt_lssd
    except ImportError:
        salt_lssd = None

if salt_lssd is not None:
    from salt_lssd import LssdError, common, install, pack, procs, releases, swarm, tracker
    from salt_lssd import torrent as metainfo
else:  # pragma: no cover - __virtual__ refuses to load
    LssdError = Exception

try:
    import libtorrent  # noqa: F401  pylint: disable=unused-import

    HAS_LIBTORRENT = True
except ImportError:
    HAS_LIBTORRENT = False

log = logging.getLogger(__name__)

__virtualname__ = "lssd"

MINE_TORRENT_PREFIX = "lssd_torrent_"
MINE_TRACKER = "lssd_tracker"
DEFAULT_TRACKER_PORT = 8998


def __virtual__():
    if salt_lssd is None:
        return (
            False,
            "lssd: the salt_lssd package is missing: run saltutil.sync_all (classic install) "
            "or pip install salt-lssd into the Python that runs Salt",
        )
    if not HAS_LIBTORRENT:
        return (
            False,
            "lssd: the libtorrent Python bindings are missing: salt-pip install libtorrent "
            "(onedir Salt) or pip install libtorrent, or state.apply lssd.setup",
        )
    return __virtualname__


def _wrap(func):
    """Turn our LssdError into the CommandExecutionError Salt shows as a clean error."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LssdError as exc:
            raise CommandExecutionError(str(exc)) from None

    return wrapper


def _conf(key, default=None):
    value = __salt__["config.get"](f"lssd:{key}", default)
    return default if value is None or value == "" else value


def _layout():
    return common.Layout(_conf("state_dir") or os.path.join(__opts__["cachedir"], "lssd"))


def _libtorrent_settings():
    """Pillar ``lssd:libtorrent_settings``, checked here so a typo fails the Salt job."""
    return swarm.check_overrides(_conf("libtorrent_settings"), "lssd:libtorrent_settings")


def _fire(tag, data):
    try:
        __salt__["event.send"](tag, data)
    except Exception as exc:  # pylint: disable=broad-except
        # Progress is a courtesy; never fail a deploy because the event bus is away.
        log.debug("lssd: could not send event %s: %s", tag, exc)


def _bool(value, name):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise LssdError(f"{name} {value!r} is not a boolean; allowed: true or false")


def _number(value, name, minimum=0):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LssdError(f"{name} {value!r} is not a number") from None
    if number < minimum:
        raise LssdError(f"{name} {value!r} is below the minimum of {minimum}")
    return number


# --------------------------------------------------------------------------- tracker


@_wrap
def tracker_start(port=None, bind="0.0.0.0", interval=None):
    """
    Start the BitTorrent tracker in a detached process (a no-op if it already runs).

    port
        TCP port to listen on. Default: pillar ``lssd:tracker:port``, else 8998.
    bind
        Address to listen on. Default: ``0.0.0.0`` (all IPv4 addresses).
    interval
        Seconds between a peer's announces. Default: 10 (deploys are short).

    The tracker only serves info-hashes registered with :py:func:`tracker_allow`. Its
    announce URL is published to the mine as ``lssd_tracker``.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_start
        salt tracker01 lssd.tracker_start port=6969
    """
    layout = _layout()
    run_dir = layout.run_dir("tracker")
    port = int(_number(port if port is not None else _conf("tracker:port", DEFAULT_TRACKER_PORT), "port", 1))
    current = procs.state(run_dir)
    if current["running"]:
        current.update(changed=False, comment=f"tracker already running (pid {current.get('pid')})")
        return current
    config = {"bind": bind, "port": port, "state_dir": layout.root}
    if interval is not None:
        config["interval"] = int(_number(interval, "interval", 1))
    started = procs.spawn("tracker", run_dir, config)
    started.update(changed=True, comment=f"tracker started on {bind}:{port}")
    url = tracker_address()["url"]
    try:
        _publish(MINE_TRACKER, "lssd.tracker_address", lambda entry: entry.get("url") == url, 30)
    except Exception as exc:  # pylint: disable=broad-except
        # Only seeders without pillar lssd:tracker:host need the mine entry; say so, go on.
        log.warning("lssd: could not publish the tracker address to the mine: %s", exc)
        started["comment"] += f"; not published to the mine ({exc})"
    return started


def tracker_address():
    """
    The announce URL peers should use for the tracker running on this minion (a mine function).

    The host is pillar ``lssd:tracker:host`` if set, else the address the tracker binds to,
    else this minion's first non-loopback IPv4 address.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_address
    """
    current = procs.state(_layout().run_dir("tracker"))
    port = current.get("port") or _conf("tracker:port", DEFAULT_TRACKER_PORT)
    host = _conf("tracker:host")
    if not host:
        bind = current.get("bind")
        if bind and bind not in ("0.0.0.0", "::"):
            host = bind
        else:
            addrs = [a for a in __grains__.get("ipv4", []) if not a.startswith("127.")]
            host = addrs[0] if addrs else "127.0.0.1"
    return {"url": metainfo.announce_url(host, port), "host": host, "port": int(port)}


@_wrap
def tracker_stop():
    """
    Stop the tracker running on this minion (a no-op that says so if none runs).

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_stop
    """
    pid = procs.stop(_layout().run_dir("tracker"))
    try:
        __salt__["mine.delete"](MINE_TRACKER)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("lssd: could not withdraw the tracker address from the mine: %s", exc)
    if pid is None:
        return {"changed": False, "comment": "tracker was not running"}
    return {"changed": True, "pid": pid, "comment": f"tracker stopped (pid {pid})"}


@_wrap
def tracker_status():
    """
    Per-torrent counts from the running tracker: seeders, leechers, completed.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_status
    """
    current = procs.state(_layout().run_dir("tracker"))
    if not current["running"]:
        return {"running": False, "comment": "tracker is not running"}
    data = tracker.fetch_status(current.get("bind", "127.0.0.1"), current["port"])
    data.update(running=True, pid=current.get("pid"), port=current["port"], bind=current.get("bind"))
    return data


@_wrap
def tracker_allow(torrent=None, tag=None):
    """
    Register a torrent with the running tracker, which serves only registered info-hashes.

    torrent
        Path of a .torrent file on this minion, or a tag whose torrent the Salt mine holds
        (published by :py:func:`seed_start`).
    tag
        Same as passing the tag as ``torrent``.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_allow Deploy1
        salt tracker01 lssd.tracker_allow /var/cache/salt/minion/lssd/torrents/Deploy1.torrent
    """
    ref = torrent if torrent is not None else tag
    if ref is None:
        raise LssdError("tracker_allow needs a .torrent path or a tag")
    ref = str(ref)
    if os.path.isfile(ref):
        with open(ref, "rb") as fh:
            info = metainfo.read_torrent(fh.read())
        name_tag = info.get("tag") or os.path.splitext(os.path.basename(ref))[0]
    else:
        ref = common.validate_tag(ref)
        local = _layout().torrent(ref)
        if os.path.isfile(local):
            with open(local, "rb") as fh:
                info = metainfo.read_torrent(fh.read())
        else:
            info = _from_mine(ref)["info"]
        name_tag = ref
    result = tracker.allow(_layout().root, info["infohash"], name_tag)
    result.update(tag=name_tag, infohash=info["infohash"])
    return result


# --------------------------------------------------------------------------- seeder


def _tracker_url(tracker):
    """The announce URL: an explicit URL or host[:port], pillar lssd:tracker, or the mine."""
    if tracker is None:
        host = _conf("tracker:host")
        if host:
            return metainfo.announce_url(host, _conf("tracker:port", DEFAULT_TRACKER_PORT))
        published = _mine_get(MINE_TRACKER, _conf("targets:tracker", "*"))
        urls = sorted({v["url"] for v in published.values() if isinstance(v, dict) and v.get("url")})
        if len(urls) == 1:
            return urls[0]
        if not urls:
            raise LssdError(
                "no tracker address: set pillar lssd:tracker:host, pass tracker=, or start "
                "the tracker first (lssd.tracker_start publishes it to the mine)"
            )
        raise LssdError(f"several trackers are published in the mine ({', '.join(urls)}); pass tracker=")
    tracker = str(tracker)
    if "://" in tracker:
        return metainfo.check_announce_url(tracker)
    host, _, port = tracker.rpartition(":") if tracker.count(":") == 1 else (tracker, "", "")
    return metainfo.announce_url(host or tracker, port or _conf("tracker:port", DEFAULT_TRACKER_PORT))


@_wrap
def create_torrent(tag, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=False):
    """
    Pack a build into one archive and make the private .torrent that distributes it.

    tag
        The deploy tag, a name such as ``Deploy1`` (no ``/``, ``..``, whitespace).
    files_path
        Directory to pack. Default: pillar ``lssd:seeder_files_path``.
    tracker
        Announce URL, or ``host[:port]`` of the tracker. Default: pillar ``lssd:tracker:host``
        and ``lssd:tracker:port``, else the address the tracker published to the mine.
    compression
        ``none``, ``gzip`` (pigz when installed) or ``zstd``. Default: pillar
        ``lssd:compression``, else the measured default (see the README).
    exclude
        List of patterns matched against each path component. Default: pillar
        ``lssd:exclude``, else ``['.git*', '.svn*']``.
    path_is_file
        Distribute ``files_path`` as one file, unpacked (Murder's ``path_is_file``).
        Default: False.

    Returns ``tag, archive, torrent, infohash, sha256, size`` (paths absolute) and more.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.create_torrent Deploy1 files_path=/srv/builds/app
        salt build01 lssd.create_torrent Deploy1 compression=gzip exclude='[".git*", "*.log"]'
    """
    tag = common.validate_tag(tag)
    files_path = files_path or _conf("seeder_files_path")
    if not files_path:
        raise LssdError("files_path is not set: pass files_path= or set pillar lssd:seeder_files_path")
    path_is_file = _bool(path_is_file, "path_is_file")
    compression = compression or _conf("compression")
    if exclude is None:
        exclude = _conf("exclude", pack.DEFAULT_EXCLUDE)
    if isinstance(exclude, str):
        exclude = [exclude]
    url = _tracker_url(tracker)
    layout = _layout()
    started = time.time()
    packed = pack.pack(
        files_path, layout.archives, tag, compression=compression, exclude=exclude, path_is_file=path_is_file
    )
    packed_at = time.time()
    lssd_meta = {
        "tag": tag,
        "sha256": packed["sha256"],
        "compression": packed["compression"],
        "path_is_file": int(path_is_file),
    }
    if path_is_file:
        lssd_meta["file_name"] = os.path.basename(os.path.normpath(files_path))
    made = metainfo.make_torrent(packed["archive"], layout.torrent(tag), url, lssd=lssd_meta)
    done = time.time()
    result = dict(packed)
    result.update(made)
    result.update(
        tag=tag,
        tracker=url,
        pack_seconds=round(packed_at - started, 3),
        hash_seconds=round(done - packed_at, 3),
    )
    common.write_json_atomic(layout.torrent_meta(tag), result)
    _fire(f"lssd/seeder/{tag}/torrent", {k: result[k] for k in ("tag", "infohash", "sha256", "size")})
    return result


def _local_torrent(tag):
    """The torrent this minion made for ``tag`` and what create_torrent recorded."""
    layout = _layout()
    meta = common.read_json(layout.torrent_meta(tag))
    if not meta or not os.path.isfile(layout.torrent(tag)) or not os.path.isfile(meta.get("archive", "")):
        raise LssdError(f"no torrent for tag {tag!r} on this minion: run lssd.create_torrent {tag} first")
    return meta


@_wrap
def torrent_info(tag):
    """
    The torrent :py:func:`create_torrent` made for ``tag`` on this minion, or None if there
    is none (or its archive or .torrent is gone): what create_torrent returned (``archive``,
    ``torrent``, ``infohash``, ``sha256``, ``size`` ...) plus ``seeding``, whether a seeder
    for that info-hash runs. The ``lssd.seeding`` state reuses this torrent unless told to
    rebuild.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.torrent_info Deploy1
    """
    tag = common.validate_tag(tag)
    try:
        meta = _local_torrent(tag)
    except LssdError:
        return None
    run_dir = _layout().run_dir("seeder", tag)
    seeding = procs.state(run_dir)["running"] and (
        procs.read_config(run_dir).get("infohash") == meta["infohash"]
    )
    return dict(meta, seeding=seeding)


def published(tag):
    """
    What this seeder publishes to the mine for ``tag``: the .torrent (base64), its
    info-hash, the archive's SHA-256 and size, and the nonce of the current seeding run.
    Used as the mine function behind the ``lssd_torrent_<tag>`` alias.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.published Deploy1
    """
    layout = _layout()
    meta = common.read_json(layout.torrent_meta(tag)) or {}
    seeding = procs.state(layout.run_dir("seeder", tag))
    if not meta or not seeding["running"]:
        return None
    with open(layout.torrent(tag), "rb") as fh:
        data = fh.read()
    return {
        "tag": tag,
        "torrent": base64.b64encode(data).decode("ascii"),
        "infohash": meta["infohash"],
        "sha256": meta["sha256"],
        "size": meta["size"],
        "nonce": procs.read_config(layout.run_dir("seeder", tag)).get("nonce"),
        "seeder": __opts__["id"],
        "published": time.time(),
    }


def _mine_get(alias, tgt="*", tgt_type="compound"):
    try:
        return __salt__["mine.get"](tgt, alias, tgt_type=tgt_type) or {}
    except Exception as exc:  # pylint: disable=broad-except
        raise LssdError(f"could not read mine alias {alias!r}: {exc}") from None


def _from_mine(tag, nonce=None):
    """The current mine entry for ``tag``: one seeder, decoded and checked."""
    alias = MINE_TORRENT_PREFIX + tag
    entries = {
        minion: entry
        for minion, entry in _mine_get(alias, _conf("targets:seeder", "*")).items()
        if isinstance(entry, dict) and entry.get("torrent") and (nonce is None or entry.get("nonce") == nonce)
    }
    if not entries:
        raise salt_lssd.NotPublished(
            f"no seeder publishes tag {tag!r} in the mine (alias {alias})"
            + (f" with nonce {nonce}" if nonce else "")
            + ": run lssd.seed_start on the seeder first"
        )
    hashes = {entry["sha256"] for entry in entries.values()}
    if len(hashes) > 1:
        raise LssdError(
            f"seeders {sorted(entries)} publish different builds for tag {tag!r}; stop all but one"
        )
    minion, entry = sorted(entries.items(), key=lambda kv: kv[1].get("published", 0))[-1]
    data = base64.b64decode(entry["torrent"])
    info = metainfo.read_torrent(data)
    if info["infohash"] != entry["infohash"] or info["lssd"].get("sha256") != entry["sha256"]:
        raise LssdError(f"mine entry for tag {tag!r} from {minion} does not match its own torrent")
    return {"data": data, "info": info, "entry": entry}


@_wrap
def seed_start(tag, publish=True, publish_timeout=60):
    """
    Seed the archive of ``tag`` from a detached process until :py:func:`seed_stop`.

    Made by :py:func:`create_torrent` first. The torrent is published to the mine as
    ``lssd_torrent_<tag>`` with a fresh nonce; with a master, this waits until the master
    holds the new entry, so peers started afterwards never read a stale one.

    tag
        The deploy tag.
    publish
        Publish to the mine. Default: True.
    publish_timeout
        Seconds to wait for the master to hold the entry. Default: 60.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.seed_start Deploy1
    """
    tag = common.validate_tag(tag)
    lt_settings = _libtorrent_settings()
    layout = _layout()
    meta = _local_torrent(tag)
    run_dir = layout.run_dir("seeder", tag)
    current = procs.state(run_dir)
    if current["running"] and procs.read_config(run_dir).get("infohash") == meta["infohash"]:
        current.update(changed=False, comment=f"already seeding {tag} (pid {current.get('pid')})")
        return current
    if current["running"]:
        procs.stop(run_dir)  # an older build under the same tag
    config = {
        "torrent": layout.torrent(tag),
        "save_path": os.path.dirname(meta["archive"]),
        "tag": tag,
        "infohash": meta["infohash"],
        "nonce": uuid.uuid4().hex,
        "listen": _conf("listen", "0.0.0.0:0"),
        "settings": lt_settings,
    }
    started = procs.spawn("seeder", run_dir, config)
    started.update(changed=True, tag=tag, infohash=meta["infohash"], nonce=config["nonce"],
                   comment=f"seeding {tag}")
    if _bool(publish, "publish"):
        _publish(
            MINE_TORRENT_PREFIX + tag,
            "lssd.published",
            lambda entry: entry.get("nonce") == config["nonce"],
            _number(publish_timeout, "publish_timeout"),
            tag=tag,
        )
    return started


def _publish(alias, mine_function, matches, timeout, **kwargs):
    """mine.send, then wait until the master holds an entry that ``matches``: mine.send
    returns before the master has stored it, and peers must never read the previous one."""
    __salt__["mine.send"](alias, mine_function=mine_function, **kwargs)
    deadline = time.monotonic() + timeout
    while True:
        entry = _mine_get(alias, __opts__["id"], "glob").get(__opts__["id"])
        if isinstance(entry, dict) and matches(entry):
            return entry
        if time.monotonic() >= deadline:
            raise LssdError(f"the master did not store mine entry {alias} within {timeout:g}s")
        time.sleep(0.5)


@_wrap
def seed_stop(tag=None):
    """
    Stop seeding ``tag`` (default: every tag) and withdraw it from the mine.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.seed_stop Deploy1
        salt build01 lssd.seed_stop
    """
    return _stop_role("seeder", tag, withdraw=True)


def _run_dirs(role, tag=None):
    layout = _layout()
    if tag is not None:
        tag = common.validate_tag(tag)
        return {tag: layout.run_dir(role, tag)}
    found = {}
    if os.path.isdir(layout.run):
        for name in sorted(os.listdir(layout.run)):
            if name.startswith(role + "-"):
                found[name[len(role) + 1 :]] = os.path.join(layout.run, name)
    return found


def _stop_role(role, tag, withdraw=False):
    stopped = {}
    for each, run_dir in _run_dirs(role, tag).items():
        pid = procs.stop(run_dir)
        if withdraw:
            try:
                __salt__["mine.delete"](MINE_TORRENT_PREFIX + each)
            except Exception as exc:  # pylint: disable=broad-except
                log.warning("lssd: could not withdraw %s from the mine: %s", each, exc)
        if pid is not None:
            stopped[each] = pid
    if not stopped:
        comment = f"{role} for {tag} was not running" if tag else f"no {role} was running"
        return {"changed": False, "stopped": {}, "comment": comment}
    return {"changed": True, "stopped": stopped, "comment": f"stopped {role} for {', '.join(sorted(stopped))}"}


# --------------------------------------------------------------------------- peer


def _destination_path(destination_path):
    """``destination_path`` or its pillar default; LssdError if neither is set."""
    destination_path = destination_path or _conf("destination_path")
    if not destination_path:
        raise LssdError(
            "destination_path is not set: pass destination_path= or set pillar lssd:destination_path"
        )
    return destination_path


def _no_tag_directory(no_tag_directory):
    return _bool(
        no_tag_directory if no_tag_directory is not None else _conf("no_tag_directory", False),
        "no_tag_directory",
    )


def _get_torrent(tag, torrent, nonce):
    """Torrent bytes and info for ``tag``: from ``torrent`` (path or salt:// URL) or the mine."""
    if torrent is None:
        found = _from_mine(tag, nonce)
        return found["data"], found["info"]
    torrent = str(torrent)
    if torrent.startswith("salt://"):
        cached = __salt__["cp.cache_file"](torrent)
        if not cached:
            raise LssdError(f"torrent {torrent} could not be fetched from the master")
        torrent = cached
    if not os.path.isfile(torrent):
        raise LssdError(f"torrent {torrent!r} is not a file")
    with open(torrent, "rb") as fh:
        data = fh.read()
    return data, metainfo.read_torrent(data)


@_wrap
def peer(
    tag,
    destination_path=None,
    torrent=None,
    timeout=3600,
    linger=None,
    no_tag_directory=None,
    unsafe_please_delete=None,
    owner=None,
    group=None,
    mode=None,
    nonce=None,
):
    """
    Download ``tag`` through the swarm, verify it and install it into
    ``destination_path/<tag>``.

    The download runs in a detached process that keeps seeding for ``linger`` seconds after
    it completes, so later peers find pieces among their neighbours. The archive's SHA-256
    is checked before anything is extracted; extraction goes beside the target and is
    renamed into place, so the target appears complete or not at all.

    tag
        The deploy tag.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    torrent
        A .torrent path on this minion or a ``salt://`` URL. Default: the torrent the seeder
        published to the mine (``lssd_torrent_<tag>``).
    timeout
        Seconds to wait for the download. Default: 3600.
    linger
        Seconds to keep seeding after completion. Default: pillar ``lssd:linger``, else 30.
    no_tag_directory
        Install into ``destination_path`` itself. Default: pillar ``lssd:no_tag_directory``,
        else False.
    unsafe_please_delete
        Replace a non-empty target instead of failing. Default: pillar
        ``lssd:unsafe_please_delete``, else False.
    owner, group, mode
        Applied to the installed tree (owner/group recursively, mode to its top directory).
        Default: pillar ``lssd:destination_owner``, ``destination_group``,
        ``destination_mode``, else left as extracted.
    nonce
        Only accept the mine entry of the seeding run with this nonce. Default: any.

    Returns a summary: bytes, seconds, average rate, bytes from the seeder and from peers.

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.peer Deploy1 destination_path=/opt/app
        salt web01 lssd.peer Deploy1 torrent=salt://builds/Deploy1.torrent
    """
    tag = common.validate_tag(tag)
    destination_path = _destination_path(destination_path)
    timeout = _number(timeout, "timeout", 1)
    linger = _number(linger if linger is not None else _conf("linger", 30), "linger")
    progress_interval = _number(_conf("progress_interval", 5), "lssd:progress_interval")
    lt_settings = _libtorrent_settings()
    install_args = {
        "no_tag_directory": _no_tag_directory(no_tag_directory),
        "unsafe_please_delete": _bool(
            unsafe_please_delete if unsafe_please_delete is not None else _conf("unsafe_please_delete", False),
            "unsafe_please_delete",
        ),
        "owner": owner if owner is not None else _conf("destination_owner"),
        "group": group if group is not None else _conf("destination_group"),
        "mode": mode if mode is not None else _conf("destination_mode"),
    }
    # Refuse what install would refuse before a single byte moves.
    install.check(destination_path, tag, **install_args)
    data, info = _get_torrent(tag, torrent, nonce)
    lssd_meta = info["lssd"]
    if lssd_meta.get("tag") and lssd_meta["tag"] != tag:
        raise LssdError(f"torrent is for tag {lssd_meta['tag']!r}, not {tag!r}")
    if not lssd_meta.get("sha256"):
        raise LssdError("torrent carries no archive SHA-256 (not made by lssd.create_torrent)")
    layout = _layout()
    common.ensure_dir(layout.torrents)
    torrent_path = layout.torrent(tag)
    run_dir = layout.run_dir("peer", tag)
    archive = os.path.join(layout.downloads, info["name"])
    common.ensure_dir(layout.downloads)

    current = procs.state(run_dir)
    if current["running"] and procs.read_config(run_dir).get("infohash") != info["infohash"]:
        procs.stop(run_dir)
        current = procs.state(run_dir)
    if not current["running"]:
        with open(torrent_path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(torrent_path + ".tmp", torrent_path)
        config = {
            "torrent": torrent_path,
            "save_path": layout.downloads,
            "tag": tag,
            "infohash": info["infohash"],
            "linger": linger,
            "timeout": timeout,
            "listen": _conf("listen", "0.0.0.0:0"),
            "settings": lt_settings,
        }
        procs.spawn("peer", run_dir, config)

    state = _wait_for_download(tag, run_dir, archive, timeout, progress_interval)
    try:
        got = common.sha256_file(archive)
        if got != lssd_meta["sha256"]:
            raise LssdError(
                f"archive {archive} has SHA-256 {got}, but the seeder published {lssd_meta['sha256']}; "
                "the archive was removed"
            )
        installed = install.install(
            archive,
            destination_path,
            tag,
            compression=lssd_meta.get("compression"),
            path_is_file=bool(lssd_meta.get("path_is_file")),
            file_name=lssd_meta.get("file_name"),
            **install_args,
        )
    except Exception:
        procs.stop(run_dir)
        _remove(archive)
        raise
    seconds = state.get("seconds") or round(time.time() - state.get("started", time.time()), 3)
    summary = {
        "tag": tag,
        "target": installed["target"],
        "sha256": lssd_meta["sha256"],
        "infohash": info["infohash"],
        "bytes": info["size"],
        "seconds": seconds,
        "rate": round(info["size"] / seconds) if seconds else None,
        "from_seeder": state.get("from_seeder", 0),
        "from_peers": state.get("from_peers", 0),
        "files": installed.get("files"),
        "replaced": installed.get("replaced", False),
        "lingering": linger,
    }
    common.write_json_atomic(layout.installed_record(tag), dict(summary, installed=time.time()))
    _fire(f"lssd/peer/{tag}/complete", summary)
    return summary


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _wait_for_download(tag, run_dir, archive, timeout, progress_interval):
    """Poll the peer process's state until complete; a progress event every ``progress_interval`` s."""
    deadline = time.monotonic() + timeout
    next_event = 0.0 if progress_interval > 0 else float("inf")
    while True:
        state = procs.state(run_dir)
        status = state.get("status")
        if status in ("lingering", "done"):
            return state
        if status == "failed" or (not state["running"] and status not in (None, "starting")):
            procs.stop(run_dir)
            _remove(archive)
            raise LssdError(f"download of {tag} failed: {state.get('error') or status}")
        now = time.monotonic()
        if now >= deadline:
            procs.stop(run_dir)
            _remove(archive)
            raise LssdError(
                f"download of {tag} did not complete within {timeout:g}s "
                f"(at {state.get('progress', 0)}%, {state.get('peers', 0)} peers"
                + (f", tracker: {state['tracker_error']}" if state.get("tracker_error") else "")
                + "); the partial archive was removed"
            )
        if now >= next_event and status == "downloading":
            _fire(
                f"lssd/peer/{tag}/progress",
                {k: state.get(k) for k in ("progress", "download_rate", "upload_rate", "peers", "seeds", "total_done")},
            )
            next_event = now + progress_interval
        # Every waiting job polls: in the 32-peer lab Salt's processes took about a fifth of
        # the cores the swarm needed, 32 jobs polling at 4 Hz among them. Once a second until
        # the end is near, then 5 Hz so completion is seen promptly (the process reports it
        # the moment it happens).
        time.sleep(0.2 if (state.get("progress") or 0) >= 90 else 1.0)


@_wrap
def lookup(tag, torrent=None, nonce=None, missing_ok=False):
    """
    What a peer would download for ``tag``, without downloading it: the info-hash, the
    archive's SHA-256 and size, and (from the mine) the seeder and its nonce.

    tag
        The deploy tag.
    torrent
        A .torrent path or ``salt://`` URL. Default: the mine entry ``lssd_torrent_<tag>``.
    nonce
        Only accept the mine entry with this nonce. Default: any.
    missing_ok
        When no seeder publishes the tag, return ``{"tag", "published": False, "comment"}``
        instead of failing. Default: False.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.lookup Deploy1
    """
    tag = common.validate_tag(tag)
    if torrent is None:
        try:
            found = _from_mine(tag, nonce)
        except salt_lssd.NotPublished as exc:
            if not _bool(missing_ok, "missing_ok"):
                raise
            return {"tag": tag, "published": False, "comment": str(exc)}
        info, entry = found["info"], found["entry"]
    else:
        info, entry = _get_torrent(tag, torrent, nonce)[1], {}
    return {
        "tag": tag,
        "published": True,
        "infohash": info["infohash"],
        "sha256": info["lssd"].get("sha256"),
        "size": info["size"],
        "seeder": entry.get("seeder"),
        "nonce": entry.get("nonce"),
    }


@_wrap
def installed(tag=None):
    """
    What :py:func:`peer` installed on this minion and is still in place: per tag, the
    target directory, the archive's SHA-256 and when. Without ``tag``: every tag.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.installed
        salt web01 lssd.installed Deploy1
    """
    layout = _layout()
    if tag is not None:
        tag = common.validate_tag(tag)
        names = [tag + ".json"]
    elif os.path.isdir(layout.installed):
        names = sorted(n for n in os.listdir(layout.installed) if n.endswith(".json"))
    else:
        names = []
    found = {}
    for name in names:
        record = common.read_json(os.path.join(layout.installed, name))
        if record and os.path.isdir(record.get("target", "")):
            found[name[: -len(".json")]] = record
    return found.get(tag) if tag is not None else found


@_wrap
def forget(tag):
    """
    Drop the record that ``tag`` is installed (the installed tree is left alone). Used by
    the ``lssd.absent`` state after it removed the tree.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.forget Deploy1
    """
    path = _layout().installed_record(tag)
    if os.path.exists(path):
        os.unlink(path)
        return True
    return False


@_wrap
def target(tag, destination_path=None, no_tag_directory=None):
    """
    Where :py:func:`peer` installs ``tag``, with the pillar defaults resolved: returns
    ``tag``, ``destination_path``, ``no_tag_directory`` and ``target`` (the tag's directory).

    tag
        The deploy tag.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    no_tag_directory
        The target is ``destination_path`` itself. Default: pillar ``lssd:no_tag_directory``,
        else False.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.target Deploy1
        salt web01 lssd.target Deploy1 destination_path=/opt/app
    """
    tag = common.validate_tag(tag)
    destination_path = _destination_path(destination_path)
    no_tag_directory = _no_tag_directory(no_tag_directory)
    # unsafe_please_delete: only the path is wanted here, not the refusal of a full target.
    plan = install.check(destination_path, tag, no_tag_directory=no_tag_directory, unsafe_please_delete=True)
    return {
        "tag": tag,
        "destination_path": os.path.normpath(str(destination_path)),
        "no_tag_directory": no_tag_directory,
        "target": plan["target"],
    }


def _absolute_destination(destination_path):
    destination_path = os.path.normpath(str(_destination_path(destination_path)))
    if not os.path.isabs(destination_path):
        raise LssdError(f"destination_path {destination_path!r} must be an absolute path")
    return destination_path


@_wrap
def switch_current(tag, destination_path=None, link="current", test=False):
    """
    Point the symlink ``destination_path/<link>`` at the installed tag directory
    ``destination_path/<tag>`` (a relative link), atomically: a new symlink is made beside
    the old one and renamed over it. A file or directory named ``link`` is never replaced.

    tag
        The deploy tag; ``destination_path/<tag>`` must be a directory.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    link
        Name of the symlink. Default: ``current``.
    test
        Only say what would change. Default: False.

    Returns ``changed``, ``link`` (the symlink's path), ``old`` (what it pointed to, None if
    it did not exist) and ``new``.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.switch_current Deploy2 destination_path=/opt/app
        salt web01 lssd.switch_current Deploy2 link=live
    """
    tag = common.validate_tag(tag)
    destination_path = _absolute_destination(destination_path)
    return releases.switch(destination_path, tag, link=link, dry_run=_bool(test, "test"))


def _uninstall(tag, destination_path, force, test):
    layout = _layout()
    record = common.read_json(layout.installed_record(tag))
    if record and record.get("target"):
        tree = os.path.normpath(record["target"])
    elif destination_path or _conf("destination_path"):
        tree = os.path.join(_absolute_destination(destination_path), tag)
    else:
        tree = None
    if tree is not None and not os.path.lexists(tree):
        tree = None
    links = []
    if tree is not None:
        if os.path.basename(tree) != tag and not force:
            raise LssdError(
                f"{tag} was installed into {tree!r} itself (no_tag_directory), which may hold more "
                f"than the tag; set force: True to delete {tree!r}"
            )
        links = releases.remove(tree, force=force, dry_run=True)
    files = _tgz_files(layout, tag)
    has_record = os.path.exists(layout.installed_record(tag))
    result = {
        "changed": bool(tree or files or has_record),
        "tag": tag,
        "target": tree,
        "links": links,
        "files": files,
        "record": has_record,
    }
    if not result["changed"]:
        return dict(result, comment=f"nothing of {tag} to remove")
    if test:
        return dict(result, comment=f"would remove {tag}")
    # Archive first: rm_tgz refuses while this minion seeds the tag, before anything is gone.
    _stop_role("peer", tag)
    rm_tgz(tag)
    if tree is not None:
        releases.remove(tree, force=force)
    forget(tag)
    _fire(f"lssd/peer/{tag}/removed", {"tag": tag, "target": tree})
    return dict(result, comment=f"removed {tag}")


@_wrap
def uninstall(tag, destination_path=None, force=False, test=False):
    """
    Remove ``tag`` from this minion: its installed directory, its archive and torrent
    (stopping a lingering peer first) and the record that it is installed.

    tag
        The deploy tag.
    destination_path
        Where to look when there is no install record: ``destination_path/<tag>`` is removed.
        Default: pillar ``lssd:destination_path``. A record (written by :py:func:`peer`)
        names the directory and wins.
    force
        Also remove a tag that a symlink beside it (such as ``current``) points to, and the
        symlink; and a tag installed with ``no_tag_directory`` (the whole destination_path).
        Default: False.
    test
        Only say what would be removed. Default: False.

    Refused while this minion seeds the tag (``lssd.seed_stop`` it first). Returns
    ``changed``, ``target`` (the removed directory or None), ``links``, ``files`` and
    ``record`` (whether a record was dropped).

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.uninstall Deploy1
        salt web01 lssd.uninstall Deploy1 destination_path=/opt/app force=True
    """
    tag = common.validate_tag(tag)
    return _uninstall(tag, destination_path, _bool(force, "force"), _bool(test, "test"))


@_wrap
def prune(keep, destination_path=None, newest=None, link=None, test=False):
    """
    Keep the ``keep`` most recently installed tags in ``destination_path`` and remove the
    older ones (as :py:func:`uninstall` does). Only tags :py:func:`peer` installed there count;
    nothing else in the directory is touched, and a tag a symlink there (such as ``current``)
    points to is kept.

    keep
        How many tags to keep, 1 or more.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    newest
        A tag to count as the most recent whatever its record says (the one just deployed).
        Default: none.
    link
        With ``newest`` and ``test``: the name of a symlink (such as ``current``) about to be
        pointed at ``newest``, so the tag it points to now is not kept for its sake. Ignored
        without ``test``: a real prune never removes a tag a symlink points to. Default: none.
    test
        Only say what would be removed. Default: False.

    Returns ``changed``, ``keep``, ``protected`` (older tags kept because a symlink points to
    them) and ``remove`` (the tags removed, or that would be).

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.prune 3 destination_path=/opt/app
    """
    destination_path = _absolute_destination(destination_path)
    if newest is not None:
        common.validate_tag(newest)
    test = _bool(test, "test")
    link = link if test else None
    plan = releases.prune_plan(installed(), destination_path, keep, newest=newest, link=link)
    plan.pop("targets")
    if not test:
        for tag in plan["remove"]:
            _uninstall(tag, destination_path, force=False, test=False)
    if plan["remove"]:
        comment = ("would remove " if test else "removed ") + ", ".join(plan["remove"])
    else:
        comment = f"no more than {len(plan['keep'])} tags in {destination_path}"
    return dict(plan, changed=bool(plan["remove"]), comment=comment)


@_wrap
def peer_stop(tag=None):
    """
    Stop the download or lingering seeding of ``tag`` (default: every tag).

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.peer_stop
    """
    return _stop_role("peer", tag)


def _tgz_files(layout, tag):
    """The archive and torrent files of ``tag`` on this minion (what rm_tgz removes).

    Exact names only: the packed names a tag can have, and the archive its torrent or
    create_torrent record names (a path_is_file archive), never a prefix match that would
    catch another tag's files (``v1`` vs ``v1.2``)."""
    names = {tag + pack.archive_suffix(compression) for compression in pack.COMPRESSIONS}
    record = common.read_json(layout.torrent_meta(tag)) or {}
    if record.get("archive"):
        names.add(os.path.basename(record["archive"]))
    if os.path.isfile(layout.torrent(tag)):
        with open(layout.torrent(tag), "rb") as fh:
            try:
                names.add(metainfo.read_torrent(fh.read())["name"])
            except LssdError:
                pass
    candidates = [layout.torrent(tag), layout.torrent_meta(tag)]
    candidates += [os.path.join(where, name) for where in (layout.archives, layout.downloads) for name in sorted(names)]
    return [path for path in candidates if os.path.isfile(path)]


@_wrap
def rm_tgz(tag):
    """
    Remove the downloaded archive and torrent of ``tag`` from this minion (not the
    installed tree). Refused while a process still seeds or downloads it.

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.rm_tgz Deploy1
    """
    tag = common.validate_tag(tag)
    layout = _layout()
    for role in ("peer", "seeder"):
        current = procs.state(layout.run_dir(role, tag))
        if current["running"]:
            raise LssdError(
                f"{role} for tag {tag!r} is still running (pid {current.get('pid')}): "
                f"stop it first (lssd.{'peer_stop' if role == 'peer' else 'seed_stop'} {tag})"
            )
    removed = []
    for path in _tgz_files(layout, tag):
        os.unlink(path)
        removed.append(path)
    return {"changed": bool(removed), "removed": removed,
            "comment": f"removed {len(removed)} files" if removed else f"nothing of {tag} to remove"}


# --------------------------------------------------------------------------- status


@_wrap
def status():
    """
    Everything lssd runs on this minion: role, tag, pid, status, progress, rates, peers.

    CLI Example:

    .. code-block:: bash

        salt '*' lssd.status
    """
    layout = _layout()
    result = {"state_dir": layout.root, "processes": []}
    if os.path.isdir(layout.run):
        for name in sorted(os.listdir(layout.run)):
            role, _, tag = name.partition("-")
            current = procs.state(os.path.join(layout.run, name))
            current.update(role=role, tag=tag or None)
            result["processes"].append(current)
    return result
