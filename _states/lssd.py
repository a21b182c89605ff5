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

    # on a peer: current back to the tag installed before (or rollback_to)
    lssd-current:
      lssd.rolled_back:
        - destination_path: /opt/app
"""

from salt.exceptions import SaltException

__virtualname__ = "lssd"


def __virtual__():
    if "lssd.plan" not in __salt__:
        return (
            False,
            "lssd: the lssd execution module is not loaded: it needs the salt_lssd package "
            "(saltutil.sync_all, or pip install salt-lssd) and the libtorrent Python bindings "
            "(state.apply lssd.setup); see salt-call sys.doc lssd",
        )
    return __virtualname__


def _record(changes, step, out):
    """Report what a step that ran changed (see salt_lssd.plans: the plan's change, updated
    with what the call returned)."""
    value = step["changes"]
    if step["field"]:
        value = out.get(step["field"])
    elif step["fields"]:
        picked = {k: out[k] for k in step["fields"] if k in out}
        value = dict(value, **({step["nest"]: picked} if step["nest"] else picked))
    changes[step["key"]] = value
    changes.update(step["extra"])


def _apply(name, state, **kwargs):
    """One state: ask for the plan; in test mode return it; else apply its steps in order.

    A step that fails ends the state with ``result: False``; the changes of the steps that ran
    before it stay in ``changes``, so requisites such as ``onchanges`` see what happened.
    """
    ret = {"name": name, "result": True, "comment": "", "changes": {}}
    try:
        plan = __salt__["lssd.plan"](state, name, test=bool(__opts__["test"]), **kwargs)
    except SaltException as exc:
        return dict(ret, result=False, comment=str(exc))
    # Unknown keys under lssd: are said in every outcome's comment (and the minion log).
    warned = "".join(f"; warning: {w}" for w in plan.get("warnings") or ())
    ret["comment"] = plan["comment"] + warned
    if not plan["steps"]:
        return ret
    if __opts__["test"]:
        return dict(ret, result=None, changes=plan["changes"])
    comments = []
    for step in plan["steps"]:
        try:
            out = __salt__[f"lssd.{step['call']}"](**step["kwargs"])
        except SaltException as exc:
            comments.append(str(exc))
            return dict(ret, result=False, comment="; ".join(comments) + warned)
        if isinstance(out, dict) and out.get("comment"):
            comments.append(out["comment"])
        out = out if isinstance(out, dict) else {}
        if step["key"] and out.get("changed") is not False:
            _record(ret["changes"], step, out)
    ret["comment"] = ("; ".join(comments) or plan["comment"]) + warned
    return ret


def tracker_running(name, port=None, bind=None, interval=None):
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
        Address to listen on. Default: pillar ``lssd:tracker:bind``, else ``0.0.0.0``.
    interval
        Seconds between a peer's announces. Default: the tracker's own (10); a running tracker
        is accepted with any interval when this is not given.
    """
    return _apply(name, "tracker_running", port=port, bind=bind, interval=interval)


def tracker_stopped(name):
    """
    Ensure no tracker runs on this minion.

    name
        An ID for the state; not used otherwise.
    """
    return _apply(name, "tracker_stopped")


def torrent_made(name, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=None,
                 rebuild=None):
    """
    Ensure this minion holds the archive and torrent of the tag ``name``, without seeding it.

    A torrent this minion already made for the tag is kept (nothing is packed) unless
    ``rebuild`` is set. ``lssd.seeding`` does this and seeds.

    name
        The deploy tag.
    files_path, tracker, compression, exclude, path_is_file, rebuild
        As for ``lssd.seeding``.
    """
    return _apply(
        name,
        "torrent_made",
        files_path=files_path, tracker=tracker, compression=compression, exclude=exclude,
        path_is_file=path_is_file, rebuild=rebuild,
    )


def seeding(name, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=None, rebuild=None):
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
        Distribute ``files_path`` as one file, unpacked. Default: pillar ``lssd:path_is_file``,
        else False.
    rebuild
        Pack and make the torrent again even if this minion has one for the tag. Default:
        pillar ``lssd:rebuild``, else False.
    """
    return _apply(
        name,
        "seeding",
        files_path=files_path, tracker=tracker, compression=compression, exclude=exclude,
        path_is_file=path_is_file, rebuild=rebuild,
    )


def seeding_stopped(name):
    """
    Ensure this minion does not seed the tag ``name`` (or any tag, for ``all``).

    Stopping a seeder also withdraws its torrent from the mine. The archive and torrent stay
    (``lssd.absent`` or ``lssd.rm_tgz`` remove them).

    name
        A deploy tag, or ``all``.
    """
    return _apply(name, "seeding_stopped")


def deployed(
    name,
    destination_path=None,
    torrent=None,
    timeout=None,
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
        Seconds to wait for the download. Default: pillar ``lssd:timeout``, else 3600.
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
        ``destination_mode``, else ``root``, ``root`` and ``'0755'``.
    force
        Replace the installed tag when the published build under the same tag differs.
        Default: False.
    current
        A symlink in ``destination_path`` pointing (relatively) to the tag's directory,
        switched atomically: ``true`` for ``current``, or the symlink's name. A file or
        directory of that name is refused. Default: pillar ``lssd:current``, else false (no
        symlink).
    keep
        After deploying, keep this many most recently installed tags in ``destination_path``
        (1 or more) and remove older ones that lssd installed there -- directory, archive and
        record -- never anything else, and never the tag a symlink there points to.
        Default: pillar ``lssd:keep``, else none (keep all).
    """
    return _apply(
        name,
        "deployed",
        destination_path=destination_path, torrent=torrent, timeout=timeout, linger=linger,
        no_tag_directory=no_tag_directory, unsafe_please_delete=unsafe_please_delete, owner=owner, group=group,
        mode=mode, force=force, current=current, keep=keep,
    )


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
    return _apply(name, "absent", destination_path=destination_path, force=force)


def peer_stopped(name="all"):
    """
    Ensure no lssd peer runs on this minion for the tag ``name`` (or for any tag, with
    ``all``): a download or a lingering peer is stopped. Reports a change only when one ran.

    name
        A deploy tag, or ``all``.
    """
    return _apply(name, "peer_stopped")


def archive_absent(name):
    """
    Ensure the archive and torrent of the tag ``name`` are not on this minion (the installed
    tree stays). Refused while this minion still seeds or downloads the tag. Reports a change
    only when a file was removed.

    name
        The deploy tag.
    """
    return _apply(name, "archive_absent")


def rolled_back(name, destination_path=None, rollback_to=None, current=None):
    """
    Ensure the ``current`` symlink in ``destination_path`` points back at a tag this host
    still holds: ``rollback_to`` if given, else the tag installed before the one it points to
    now (the previous kept tag; ``keep`` decides how many are kept). Nothing is downloaded: a
    tag not installed in ``destination_path`` fails, naming the tags that are. A symlink that
    already points there changes nothing; test=True says what would switch.

    name
        An ID for the state; not used otherwise.
    destination_path
        Absolute directory. Default: pillar ``lssd:destination_path``.
    rollback_to
        The tag to point to. Default: pillar ``lssd:rollback_to``, else the previous tag.
    current
        ``true`` for the ``current`` symlink, or its name. Default: pillar ``lssd:current``;
        a rollback without one fails.
    """
    return _apply(name, "rolled_back", destination_path=destination_path, rollback_to=rollback_to, current=current)
