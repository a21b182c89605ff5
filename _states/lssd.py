"""
Large-scale deploys over BitTorrent, as states: what each salt-lssd role should look like.

A deploy moves one build, named by a *tag*, from a seeder to any number of peers through a
BitTorrent swarm that our own tracker coordinates. These states declare the end result --
the tracker runs, a tag is being seeded, a host holds a tag (optionally behind a ``current``
symlink, with old tags pruned), a tag is gone -- and are idempotent: a host that already holds
the tag moves no bytes. They honour ``test=True`` (nothing is built, started, downloaded or
removed) and report what they changed. The work is done by the ``lssd`` execution module
(``salt '*' sys.doc lssd``); orchestrate the roles in order (tracker, seeder, peers, stop),
as ``lssd.orch.deploy`` does.

.. code-block:: yaml

    # on the tracker minion
    lssd-tracker:
      lssd.tracker_running:
        - port: 8998

    # on the seeder minion
    Deploy2:
      lssd.seeding:
        - files_path: /srv/builds/app

    # on each peer
    Deploy2:
      lssd.deployed:
        - destination_path: /opt/app
        - owner: app
        - group: app
        - current: true        # /opt/app/current -> Deploy2
        - keep: 3              # remove all but the 3 most recent tags in /opt/app

    Deploy0:
      lssd.absent:
        - destination_path: /opt/app
"""

import logging

from salt.exceptions import CommandExecutionError, SaltException

log = logging.getLogger(__name__)

__virtualname__ = "lssd"

def __virtual__():
    if "lssd.peer" not in __salt__:
        return (
            False,
            "lssd: the lssd execution module is not loaded: it needs the salt_lssd package "
            "(saltutil.sync_all, or pip install salt-lssd) and the libtorrent Python bindings "
            "(state.apply lssd.setup); see salt-call sys.doc lssd",
        )
    return __virtualname__


def _ret(name, comment):
    return {"name": name, "result": True, "comment": comment, "changes": {}}


def _fail(ret, exc):
    ret["result"] = False
    ret["comment"] = str(exc)
    ret["changes"] = {}
    return ret


def _running(role, tag=None):
    """The processes of ``role`` (for ``tag``, unless None) that run on this minion, by tag."""
    return {
        proc.get("tag"): proc
        for proc in __salt__["lssd.status"]()["processes"]
        if proc.get("role") == role and proc.get("running") and (tag is None or proc.get("tag") == tag)
    }


def _integer(value, what, minimum):
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value).strip()) < minimum:
        raise CommandExecutionError(f"{what} {value!r} is not a whole number of at least {minimum}")
    return int(str(value).strip())


# --------------------------------------------------------------------------- tracker


def tracker_running(name, port=None, bind="0.0.0.0", interval=None):
    """
    Ensure the BitTorrent tracker runs on this minion, as asked.

    A tracker that runs with another port, bind address or announce interval than asked is
    restarted (the torrents it serves are kept: they are registered on disk).

    name
        An ID for the state; not used otherwise.
    port
        TCP port to listen on. Default: pillar ``lssd:tracker:port``, else 8998 (a running
        tracker is accepted on any port when this is not given).
    bind
        Address to listen on. Default: ``0.0.0.0``.
    interval
        Seconds between a peer's announces. Default: the tracker's own (10); a running tracker
        is accepted with any interval when this is not given.
    """
    ret = _ret(name, "The tracker is already running as specified")
    try:
        port = _integer(port, "port", 1)
        interval = _integer(interval, "interval", 1)
        current = _running("tracker").get(None)
        old = None
        if current:
            old = {k: current.get(k) for k in ("pid", "bind", "port", "interval")}
            wanted = {"bind": bind, "port": port, "interval": interval}
            differs = {k: v for k, v in wanted.items() if v is not None and current.get(k) != v}
            if not differs:
                ret["comment"] = (
                    f"The tracker is already running on {current.get('bind')}:{current.get('port')}"
                )
                return ret
        verb = "restart" if current else "start"
        ret["changes"] = {"tracker": {"old": old, "new": {"bind": bind, "port": port, "interval": interval}}}
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"The tracker would {verb} on {bind}:{port or 'the configured port'}"
            return ret
        if current:
            __salt__["lssd.tracker_stop"]()
        started = __salt__["lssd.tracker_start"](port=port, bind=bind, interval=interval)
        ret["changes"]["tracker"]["new"] = {k: started.get(k) for k in ("pid", "bind", "port", "interval")}
        ret["comment"] = f"The tracker was {verb}ed on {started.get('bind')}:{started.get('port')}"
    except SaltException as exc:
        _fail(ret, exc)
    return ret


def tracker_stopped(name):
    """
    Ensure no tracker runs on this minion.

    name
        An ID for the state; not used otherwise.
    """
    ret = _ret(name, "The tracker is already stopped")
    try:
        current = _running("tracker").get(None)
        if not current:
            return ret
        ret["changes"] = {
            "tracker": {"old": {k: current.get(k) for k in ("pid", "bind", "port")}, "new": None}
        }
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"The tracker (pid {current.get('pid')}) would be stopped"
            return ret
        stopped = __salt__["lssd.tracker_stop"]()
        ret["comment"] = stopped.get("comment", "The tracker was stopped")
    except SaltException as exc:
        _fail(ret, exc)
    return ret


# --------------------------------------------------------------------------- seeder


def seeding(
    name, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=False, rebuild=False
):
    """
    Ensure this minion seeds the tag ``name``, building its archive and torrent if needed.

    A torrent this minion already made for the tag is reused (the build is not packed again)
    unless ``rebuild`` is set; a new build under the same tag therefore needs ``rebuild: True``
    or a new tag. The seeder is started and the torrent published to the mine; a seeder that
    already seeds this torrent is left alone. Register the torrent with the tracker
    (``lssd.tracker_allow``) on the tracker minion.

    name
        The deploy tag.
    files_path
        Directory to pack. Default: pillar ``lssd:seeder_files_path``.
    tracker
        Announce URL or ``host[:port]`` of the tracker. Default: pillar ``lssd:tracker:host``
        else the address the tracker published to the mine.
    compression
        ``none``, ``gzip`` or ``zstd``. Default: pillar ``lssd:compression``, else zstd.
    exclude
        Patterns of names not to pack. Default: pillar ``lssd:exclude``, else
        ``['.git*', '.svn*']``.
    path_is_file
        Distribute ``files_path`` as one file, unpacked. Default: False.
    rebuild
        Pack and make the torrent again even if this minion has one for the tag. Default: False.
    """
    ret = _ret(name, f"{name} is already being seeded")
    try:
        info = __salt__["lssd.torrent_info"](name)
        build = bool(rebuild) or info is None
        if not build and info["seeding"]:
            ret["comment"] = f"{name} is already being seeded (infohash {info['infohash']})"
            return ret
        if __opts__["test"]:
            ret["result"] = None
            if build:
                ret["changes"]["built"] = {
                    "tag": name,
                    "files_path": files_path or "(pillar lssd:seeder_files_path)",
                }
            ret["changes"]["seeding"] = {"old": False, "new": True}
            ret["comment"] = (f"{name} would be packed and " if build else f"{name} would be ") + "seeded"
            return ret
        comments = []
        if build:
            made = __salt__["lssd.create_torrent"](
                name,
                files_path=files_path,
                tracker=tracker,
                compression=compression,
                exclude=exclude,
                path_is_file=path_is_file,
            )
            ret["changes"]["built"] = {k: made[k] for k in ("infohash", "sha256", "size")}
            comments.append(f"{name} was packed ({made['size']} bytes, infohash {made['infohash']})")
        started = __salt__["lssd.seed_start"](name)
        if started.get("changed"):
            ret["changes"]["seeding"] = {
                "old": False,
                "new": True,
                "pid": started.get("pid"),
                "infohash": started.get("infohash"),
            }
            comments.append(f"seeding {name} started")
        else:
            comments.append(f"{name} was already being seeded")
        ret["comment"] = "; ".join(comments)
    except SaltException as exc:
        _fail(ret, exc)
    return ret


def seeding_stopped(name):
    """
    Ensure this minion does not seed the tag ``name`` (or any tag, for ``all``).

    Stopping a seeder also withdraws its torrent from the mine. The archive and torrent stay
    (``lssd.absent`` or ``lssd.rm_tgz`` remove them).

    name
        A deploy tag, or ``all``.
    """
    ret = _ret(name, "No tag is being seeded" if name == "all" else f"{name} is already not being seeded")
    try:
        tag = None if name == "all" else name
        running = _running("seeder", tag)
        if not running:
            return ret
        ret["changes"]["stopped"] = sorted(running)
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"Seeding would stop for {', '.join(sorted(running))}"
            return ret
        stopped = __salt__["lssd.seed_stop"](tag)
        ret["changes"]["stopped"] = sorted(stopped.get("stopped") or running)
        ret["comment"] = f"Seeding stopped for {', '.join(ret['changes']['stopped'])}"
    except SaltException as exc:
        _fail(ret, exc)
    return ret


# --------------------------------------------------------------------------- peer


def _link_name(current):
    if current is None or current is False:
        return None
    if current is True:
        return "current"
    if isinstance(current, str) and current:
        return current
    raise CommandExecutionError(f"current {current!r} must be true, false or the name of a symlink")


def deployed(
    name,
    destination_path=None,
    torrent=None,
    timeout=3600,
    linger=None,
    no_tag_directory=None,
    unsafe_please_delete=None,
    owner=None,
    group=None,
    mode=None,
    force=False,
    current=None,
    keep=None,
):
    """
    Ensure this host holds the tag ``name`` in ``destination_path/<name>``, downloading it
    through the swarm if needed.

    A tag lssd installed there before (``lssd.installed``) is compared with what the seeder
    publishes now: the same SHA-256 (or no seeder publishing the tag any more) means nothing to
    do and no bytes move; a different build under the same tag fails unless ``force``. Owner,
    group and mode apply to a new install only.

    name
        The deploy tag.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    torrent
        A .torrent path on this minion or a ``salt://`` URL. Default: the torrent the seeder
        published to the mine.
    timeout
        Seconds to wait for the download. Default: 3600.
    linger
        Seconds the peer keeps seeding after its download. Default: pillar ``lssd:linger``,
        else 30.
    no_tag_directory
        Install into ``destination_path`` itself. Default: pillar ``lssd:no_tag_directory``,
        else False. Not with ``current`` or ``keep``.
    unsafe_please_delete
        Replace a non-empty target directory that lssd did not install. Default: pillar
        ``lssd:unsafe_please_delete``, else False.
    owner, group, mode
        Owner, group (recursively) and mode (of the tag directory) of the installed tree.
        Default: pillar ``lssd:destination_owner``, ``destination_group``,
        ``destination_mode``, else as extracted.
    force
        Replace the installed tag when the published build under the same tag differs.
        Default: False.
    current
        A symlink in ``destination_path`` pointing (relatively) to the tag's directory,
        switched atomically: ``true`` for ``current``, or the symlink's name. A file or
        directory of that name is refused. Default: None (no symlink).
    keep
        After deploying, keep this many most recently installed tags in ``destination_path``
        (1 or more) and remove older ones that lssd installed there -- directory, archive and
        record -- never anything else, and never the tag a symlink there points to.
        Default: None (keep all).
    """
    ret = _ret(name, f"{name} is already deployed")
    try:
        link = _link_name(current)
        keep = _integer(keep, "keep", 1)
        where = __salt__["lssd.target"](
            name, destination_path=destination_path, no_tag_directory=no_tag_directory
        )
        destination, target = where["destination_path"], where["target"]
        if where["no_tag_directory"] and (link or keep):
            raise CommandExecutionError(
                "current and keep need one directory per tag; they cannot be used with no_tag_directory"
            )
        if link:
            # Refuses a non-symlink in the way before a single byte moves.
            __salt__["lssd.switch_current"](name, destination, link=link, test=True)

        record = __salt__["lssd.installed"](name)
        if record and record.get("target") != target:
            record = None  # installed elsewhere: this destination does not hold it
        wanted = __salt__["lssd.lookup"](name, torrent=torrent, missing_ok=True)
        unpublished = None
        if not wanted["published"]:
            if not (record or __opts__["test"]):
                raise CommandExecutionError(wanted["comment"])
            wanted, unpublished = None, wanted["comment"]

        download = replace = False
        if record is None:
            download = True
        elif wanted is not None and wanted["sha256"] != record.get("sha256"):
            if not force:
                ret["result"] = False
                ret["comment"] = (
                    f"{name} is installed in {target} with SHA-256 {record.get('sha256')}, but the "
                    f"published build of {name} has SHA-256 {wanted['sha256']}; set force: True to "
                    "replace it (or deploy the new build under a new tag)"
                )
                return ret
            download = replace = True
        elif unpublished:
            ret["comment"] = (
                f"{name} is already deployed (no seeder publishes it now; the installed build stands)"
            )

        if __opts__["test"]:
            return _deployed_test(
                ret, name, destination, target, link, keep, record, wanted, unpublished, download, replace
            )

        comments = []
        if download:
            if replace:
                # The old build's archive has the new one's name: drop it rather than resume it.
                __salt__["lssd.peer_stop"](name)
                __salt__["lssd.rm_tgz"](name)
            summary = __salt__["lssd.peer"](
                name,
                destination_path=destination,
                torrent=torrent,
                timeout=timeout,
                linger=linger,
                no_tag_directory=where["no_tag_directory"],
                unsafe_please_delete=True if replace else unsafe_please_delete,
                owner=owner,
                group=group,
                mode=mode,
            )
            ret["changes"]["deployed"] = {
                k: summary.get(k)
                for k in ("target", "sha256", "bytes", "seconds", "rate", "from_seeder", "from_peers")
            }
            if replace:
                ret["changes"]["sha256"] = {"old": record.get("sha256"), "new": summary.get("sha256")}
            comments.append(
                f"{'replaced' if replace else 'deployed'} {name} in {summary['target']} "
                f"({summary['bytes']} bytes in {summary['seconds']} s)"
            )
        if link:
            switched = __salt__["lssd.switch_current"](name, destination, link=link)
            if switched["changed"]:
                ret["changes"]["current"] = {"old": switched["old"], "new": name}
                comments.append(f"{switched['link']} now points to {name}")
        if keep:
            pruned = __salt__["lssd.prune"](keep, destination, newest=name, link=link)
            if pruned["changed"]:
                ret["changes"]["removed"] = pruned["remove"]
                comments.append(f"removed older tags {', '.join(pruned['remove'])}")
        if comments:
            ret["comment"] = "; ".join(comments)
    except SaltException as exc:
        _fail(ret, exc)
    return ret


def _deployed_test(
    ret, name, destination, target, link, keep, record, wanted, unpublished, download, replace
):
    """The test=True half of ``deployed``: what would change, with no side effect."""
    comments = []
    if download:
        size = wanted["size"] if wanted else None
        ret["changes"]["deployed"] = {"target": target, "sha256": wanted and wanted["sha256"], "bytes": size}
        if replace:
            ret["changes"]["sha256"] = {"old": record.get("sha256"), "new": wanted["sha256"]}
            comments.append(f"would replace {name} in {target} (force): download {size} bytes")
        elif wanted:
            comments.append(f"would download {name} ({size} bytes) to {target}")
        else:
            comments.append(f"would download {name} to {target} once a seeder publishes it ({unpublished})")
    if link:
        switched = __salt__["lssd.switch_current"](name, destination, link=link, test=True)
        if switched["changed"]:
            ret["changes"]["current"] = {"old": switched["old"], "new": name}
            comments.append(f"would point {switched['link']} to {name}")
    if keep:
        pruned = __salt__["lssd.prune"](keep, destination, newest=name, link=link, test=True)
        if pruned["changed"]:
            ret["changes"]["removed"] = pruned["remove"]
            comments.append(f"would remove older tags {', '.join(pruned['remove'])}")
    if ret["changes"]:
        ret["result"] = None
        ret["comment"] = "; ".join(comments)
    return ret


def absent(name, destination_path=None, force=False):
    """
    Ensure the tag ``name`` is not on this host: its installed directory, archive, torrent and
    install record are removed (a lingering peer for it is stopped first).

    The directory is the one the install record names, else ``destination_path/<name>``.
    Nothing is removed while this minion seeds the tag (``lssd.seeding_stopped`` first).

    name
        The deploy tag.
    destination_path
        Where to look when there is no install record. Default: pillar
        ``lssd:destination_path``.
    force
        Also remove the tag that a symlink beside it (such as ``current``) points to, and that
        symlink; and a tag installed with ``no_tag_directory``. Default: False.
    """
    ret = _ret(name, f"{name} is already absent")
    try:
        plan = __salt__["lssd.uninstall"](name, destination_path=destination_path, force=force, test=True)
        if not plan["changed"]:
            return ret
        removed = {k: plan[k] for k in ("target", "links", "files", "record") if plan[k]}
        ret["changes"]["removed"] = removed
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"{name} would be removed" + (
                f" from {plan['target']}" if plan["target"] else ""
            )
            return ret
        done = __salt__["lssd.uninstall"](name, destination_path=destination_path, force=force)
        ret["changes"]["removed"] = {k: done[k] for k in ("target", "links", "files", "record") if done[k]}
        ret["comment"] = f"{name} was removed" + (f" from {done['target']}" if done["target"] else "")
    except SaltException as exc:
        _fail(ret, exc)
    return ret
