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

Defaults come from pillar (or minion config) under ``lssd:`` -- see ``pillar.example``; an
argument given here wins. Each function is an adapter: it makes one call into the
``salt_lssd`` package, which holds the workflows, and turns its errors into Salt's.

:depends: libtorrent (Python bindings, 2.x); zstd and pigz command-line tools for compressed
    archives. ``state.apply lssd.setup`` installs them.
"""

import functools
import os
import subprocess
import sys

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
    from salt_lssd import LssdError, deploy, inventory, mine, plans, procs, seeder, tracker_role
    from salt_lssd.minion import Minion
    from salt_lssd.settings import check
else:  # pragma: no cover - __virtual__ refuses to load
    LssdError = Exception

try:
    import libtorrent  # noqa: F401  pylint: disable=unused-import

    HAS_LIBTORRENT = True
except ImportError:
    HAS_LIBTORRENT = False

__virtualname__ = "lssd"


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
    """Turn every error of a call into the CommandExecutionError Salt shows as a clean
    error naming the cause, never an "un-handled exception" traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CommandExecutionError:
            raise
        except LssdError as exc:
            raise CommandExecutionError(str(exc)) from None
        except (OSError, ValueError, TypeError, KeyError, ImportError, subprocess.SubprocessError) as exc:
            raise CommandExecutionError(f"lssd.{func.__name__}: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _minion(app=None):
    """The minion, in the app namespace ``app`` (default: pillar lssd:app, else none)."""
    return Minion(__opts__, __salt__, __grains__, app=app)


def _flag(value, name):
    """A boolean argument, given on the command line as true/false."""
    return check("force", value, name)


@_wrap
def tracker_start(port=None, bind=None, interval=None):
    """
    Start the BitTorrent tracker in a detached process (a no-op if it already runs).

    port
        TCP port to listen on. Default: pillar ``lssd:tracker:port``, else 8998.
    bind
        Address to listen on. Default: pillar ``lssd:tracker:bind``, else ``0.0.0.0`` (all
        IPv4 addresses).
    interval
        Seconds between a peer's announces. Default: 10 (deploys are short).

    The tracker only serves info-hashes registered with :py:func:`tracker_allow`. Its
    announce URL is published to the mine as ``lssd_tracker``.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_start
        salt tracker01 lssd.tracker_start port=6969
    """
    return tracker_role.start(_minion(), port=port, bind=bind, interval=interval)


@_wrap
def tracker_address():
    """
    The announce URL peers should use for the tracker running on this minion (a mine function).

    The host is pillar ``lssd:tracker:host`` if set, else the address the tracker binds to,
    else this minion's first non-loopback IPv4 address.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_address
    """
    return tracker_role.address(_minion())


@_wrap
def tracker_stop():
    """
    Stop the tracker running on this minion (a no-op that says so if none runs).

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_stop
    """
    return tracker_role.stop(_minion())


@_wrap
def tracker_status():
    """
    Per-torrent counts from the running tracker: seeders, leechers, completed.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_status
    """
    return tracker_role.status(_minion())


@_wrap
def tracker_allow(torrent=None, tag=None, seeder=None, run_id=None, wait=None, app=None):
    """
    Register a torrent with the running tracker, which serves only registered info-hashes.

    torrent
        Path of a .torrent file on this minion, or a tag whose torrent the Salt mine holds
        (published by :py:func:`seed_start`).
    tag
        Same as passing the tag as ``torrent``.
    seeder
        Compound target of the seeder whose mine entry to read. Default: pillar
        ``lssd:targets:seeder`` (required with a master: mine entries of other minions are
        not trusted).
    run_id
        The orchestrate's run id: register the torrent the seeder publishes for that run,
        waiting for it (the orchestrate starts this while the seeder packs).
    wait
        Seconds to wait for that run's torrent. Default: pillar ``lssd:job_timeout``.
    app
        The app namespace (see ``lssd:app``). Default: pillar ``lssd:app``, else none.

    CLI Example:

    .. code-block:: bash

        salt tracker01 lssd.tracker_allow Deploy1
        salt tracker01 lssd.tracker_allow /var/cache/salt/minion/lssd/torrents/Deploy1.torrent
    """
    return tracker_role.allow(_minion(app), torrent if torrent is not None else tag, seeder=seeder, run_id=run_id,
                              wait=wait)


@_wrap
def create_torrent(tag, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=None,
                   mode=None):
    """
    Pack a build into one archive (or, in tree mode, hash its files) and make the private
    .torrent that distributes it.

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
        Default: pillar ``lssd:path_is_file``, else False.
    mode
        ``archive`` (one packed archive) or ``tree`` (the build's own files, piece-aligned in
        one multi-file torrent; seeded from ``files_path`` itself, which must not change while
        it is seeded). Default: pillar ``lssd:mode``, else ``archive``.

    Returns ``tag, archive, torrent, infohash, sha256, size`` (paths absolute) and more; in
    tree mode ``archive`` is None and ``manifest`` and ``root`` say what is seeded.

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.create_torrent Deploy1 files_path=/srv/builds/app
        salt build01 lssd.create_torrent Deploy1 compression=gzip exclude='[".git*", "*.log"]'
    """
    return seeder.create_torrent(
        _minion(), tag, files_path=files_path, tracker=tracker, compression=compression, exclude=exclude,
        path_is_file=path_is_file, mode=mode,
    )


@_wrap
def torrent_info(tag, app=None):
    """
    The torrent :py:func:`create_torrent` made for ``tag`` on this minion, or None if there
    is none (or its archive or .torrent is gone): what create_torrent returned (``archive``,
    ``torrent``, ``infohash``, ``sha256``, ``size`` ...) plus ``seeding``, whether a seeder
    for that info-hash runs. The ``lssd.seeding`` state reuses this torrent unless told to
    rebuild. ``app``: the app namespace (default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.torrent_info Deploy1
    """
    return seeder.torrent_info(_minion(app), tag)


@_wrap
def published(tag, app=None):
    """
    What this seeder publishes to the mine for ``tag``: the .torrent (base64), its
    info-hash, the archive's SHA-256 and size, and the nonce of the current seeding run.
    Used as the mine function behind the ``lssd_torrent_<tag>`` alias (``lssd_torrent_<app>/<tag>``
    for a tag of the app namespace ``app``; default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.published Deploy1
    """
    return seeder.published(_minion(app), tag)


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
    return seeder.seed_start(_minion(), tag, publish=_flag(publish, "publish"), publish_timeout=publish_timeout)


@_wrap
def seed_stop(tag=None, app=None):
    """
    Stop seeding ``tag`` (default: every tag of the app namespace) and withdraw it from the
    mine. ``app``: the app namespace (default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt build01 lssd.seed_stop Deploy1
        salt build01 lssd.seed_stop
    """
    return seeder.seed_stop(_minion(app), tag)


@_wrap
def peer(
    tag,
    destination_path=None,
    torrent=None,
    timeout=None,
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
        Seconds to wait for the download. Default: pillar ``lssd:timeout``, else 3600.
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
        ``destination_mode``, else ``root``, ``root`` and ``'0755'``.
    nonce
        Only accept the mine entry of the seeding run with this nonce. Default: any.

    The torrent says how the build travels (the seeder's ``lssd:mode``): as one archive, or
    in tree mode as its own files, downloaded straight beside the target, each checked
    against the manifest before the tree is renamed into place; files this host already
    holds in other installed tags of the app (same content, hashed again now) are copied
    instead of downloaded.

    Returns a summary: mode, bytes, seconds, average rate, bytes from the seeder and from
    peers, ``downloaded`` (their sum) and ``reused`` (bytes this host already held).

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.peer Deploy1 destination_path=/opt/app
        salt web01 lssd.peer Deploy1 torrent=salt://builds/Deploy1.torrent
    """
    return deploy.peer(
        _minion(), tag, destination_path=destination_path, torrent=torrent, timeout=timeout, linger=linger,
        nonce=nonce, no_tag_directory=no_tag_directory, unsafe_please_delete=unsafe_please_delete, owner=owner,
        group=group, mode=mode,
    )


@_wrap
def peer_stop(tag=None, app=None):
    """
    Stop the download or lingering seeding of ``tag`` (default: every tag of the app
    namespace). ``app``: the app namespace (default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.peer_stop
    """
    return procs.stop_each("peer", _minion(app).layout.run_dirs("peer", tag), tag)


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
    return deploy.lookup(_minion(), tag, torrent=torrent, nonce=nonce, missing_ok=_flag(missing_ok, "missing_ok"))


@_wrap
def installed(tag=None, app=None):
    """
    What :py:func:`peer` installed on this minion and is still in place: per tag, the
    target directory, the archive's SHA-256, the ``run_id`` of the run that deployed it and
    when. Without ``tag``: every tag. ``app``: the app namespace whose records to read
    (default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.installed
        salt web01 lssd.installed Deploy1
    """
    return inventory.installed(_minion(app), tag)


@_wrap
def forget(tag):
    """
    Drop the record that ``tag`` is installed (the installed tree is left alone). Used by
    the ``lssd.absent`` state after it removed the tree.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.forget Deploy1
    """
    return inventory.forget(_minion(), tag)


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
    return inventory.target(_minion(), tag, destination_path=destination_path, no_tag_directory=no_tag_directory)


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
    return inventory.switch_current(_minion(), tag, destination_path, link=link, test=_flag(test, "test"))


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
    return inventory.uninstall(
        _minion(), tag, destination_path=destination_path, force=_flag(force, "force"), test=_flag(test, "test")
    )


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
    return inventory.prune(
        _minion(), keep, destination_path=destination_path, newest=newest, link=link, test=_flag(test, "test")
    )


@_wrap
def rm_tgz(tag):
    """
    Remove the downloaded archive and torrent of ``tag`` from this minion (not the
    installed tree). Refused while a process still seeds or downloads it.

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.rm_tgz Deploy1
    """
    return inventory.rm_tgz(_minion(), tag)


@_wrap
def abort_run(run_id, reason="the run's seeder or tracker failed"):
    """
    Mark run ``run_id`` aborted on this minion: a peer or tracker of that run still waiting
    for its torrent stops waiting and fails, naming ``reason``. The orchestrate calls this on
    the run's peers and tracker when the seeder or the tracker fails, so that the peers it
    started beside the seeder do not wait out their timeout.

    CLI Example:

    .. code-block:: bash

        salt 'web*' lssd.abort_run 0b6f1c2e-7d1a-4c51-9a53-1f0e2d3c4b5a
    """
    return mine.abort(_minion(), check("run_id", run_id, "run_id"), reason)


@_wrap
def status(app=None):
    """
    Everything lssd runs on this minion, in every app namespace: role, tag, app, pid,
    status, progress, rates, peers; and the tags installed in the app namespace ``app``
    (default: pillar ``lssd:app``, else none).

    CLI Example:

    .. code-block:: bash

        salt '*' lssd.status
    """
    return inventory.status(_minion(app))


@_wrap
def plan(state, name, **kwargs):
    """
    What the ``lssd`` state ``state`` would change for ``name``, without changing anything:
    ``comment``, ``changes`` and the ``steps`` (execution functions and their arguments)
    that the state applies in order. The states call this; it is here so an operator can
    ask the same question.

    state
        One of ``tracker_running``, ``tracker_stopped``, ``torrent_made``, ``seeding``,
        ``seeding_stopped``, ``deployed``, ``absent``, ``peer_stopped``, ``archive_absent``,
        ``rolled_back``.
    name
        The state's name (a tag, or ``all`` where the state allows it).
    kwargs
        The state's arguments.

    CLI Example:

    .. code-block:: bash

        salt web01 lssd.plan deployed Deploy2 current=True keep=3
    """
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    return plans.plan(_minion(), state, name, **kwargs)
