"""What each ``lssd`` state would change, decided before anything changes.

A plan is ``{"comment", "changes", "steps"}``: with no steps the state is already as
declared (``comment`` says so); otherwise ``changes`` and ``comment`` say what would happen
(the test=True answer), and each step names the ``lssd`` execution function that does one
part of it, its arguments, and the key of ``changes`` it fills. The states apply the steps in
order and report the changes of the steps that ran, also when a later one fails. The checks
a real run makes before moving a byte are made here too, so test=True reports what would fail.
"""

import os

from salt_lssd import LssdError, deploy, install, inventory, procs, releases, seeder
from salt_lssd.common import validate_tag
from salt_lssd.settings import check, number

DEPLOYED_FIELDS = ("target", "mode", "sha256", "bytes", "seconds", "rate", "from_seeder", "from_peers", "reused",
                   "downloaded")


def _plan(comment, steps=(), changes=None):
    return {"comment": comment, "steps": list(steps), "changes": changes or {}}


def _step(call, key, changes=None, fields=None, field=None, nest=None, extra=None, **kwargs):
    """One call of a plan. Once it ran, ``changes[key]`` is ``changes`` updated with the
    ``fields`` of its result (under ``nest`` if given), or its result's ``field``; ``extra``
    changes are reported beside it."""
    return {"call": call, "kwargs": kwargs, "key": key, "changes": changes or {}, "fields": fields,
            "field": field, "nest": nest, "extra": extra or {}}


def _running(minion, role, tag=None):
    return {
        each: procs.state(run_dir)
        for (_, each), run_dir in minion.layout.run_dirs(role, tag).items()
        if procs.state(run_dir)["running"]
    }


def tracker_running(minion, name, port=None, bind=None, interval=None):
    bind = minion.setting("tracker:bind", bind)
    # A running tracker is accepted on any port or interval the state does not name.
    asked = {"bind": bind, "port": port if port is None else minion.setting("tracker:port", port),
             "interval": interval if interval is None else int(number(interval, "interval", 1))}
    current = _running(minion, "tracker").get(None)
    old = None
    if current:
        old = {k: current.get(k) for k in ("pid", "bind", "port", "interval")}
        if all(v is None or current.get(k) == v for k, v in asked.items()):
            return _plan(f"The tracker is already running on {current.get('bind')}:{current.get('port')}")
    port = asked["port"] or minion.setting("tracker:port")
    changes = {"tracker": {"old": old, "new": dict(asked, port=port)}}
    steps = [_step("tracker_stop", None)] if current else []
    steps.append(_step("tracker_start", "tracker", changes["tracker"], fields=("pid", "bind", "port", "interval"),
                       nest="new", port=port, bind=bind, interval=interval))
    verb = "restart" if current else "start"
    return _plan(f"The tracker would {verb} on {bind}:{port}", steps, changes)


def tracker_stopped(minion, name):
    current = _running(minion, "tracker").get(None)
    if not current:
        return _plan("The tracker is already stopped")
    changes = {"tracker": {"old": {k: current.get(k) for k in ("pid", "bind", "port")}, "new": None}}
    return _plan(f"The tracker (pid {current.get('pid')}) would be stopped", [_step("tracker_stop", "tracker", changes["tracker"])],
                 changes)


def _build_steps(minion, tag, files_path, tracker, compression, exclude, path_is_file):
    """The step that packs ``tag`` and makes its torrent, and its change (``built``)."""
    files_path = minion.setting("seeder_files_path", files_path)
    changes = {"built": {"tag": tag, "files_path": files_path}}
    step = _step("create_torrent", "built", fields=("infohash", "sha256", "size"), tag=tag, files_path=files_path,
                 tracker=tracker, compression=compression, exclude=exclude, path_is_file=path_is_file)
    return [step], changes


def torrent_made(minion, name, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=None,
                 rebuild=None):
    tag = validate_tag(name)
    made = seeder.torrent_info(minion, tag)
    if made is not None and not minion.setting("rebuild", rebuild):
        return _plan(f"The torrent of {tag} exists (infohash {made['infohash']})")
    steps, changes = _build_steps(minion, tag, files_path, tracker, compression, exclude, path_is_file)
    verb = "packed again" if made is not None else "packed"
    return _plan(f"{tag} would be {verb} and its torrent made", steps, changes)


def seeding(minion, name, files_path=None, tracker=None, compression=None, exclude=None, path_is_file=None,
            rebuild=None):
    tag = validate_tag(name)
    made = seeder.torrent_info(minion, tag)
    build = minion.setting("rebuild", rebuild) or made is None
    # Published for another run (an interrupted one that left this seeder running): this run's
    # tracker and peers wait for an entry of their own run, so it is published again.
    if not build and made["seeding"] and made["published"] and made["published_for"] == minion.setting("run_id"):
        return _plan(f"{tag} is already being seeded (infohash {made['infohash']})")
    steps, changes = [], {}
    if build:
        steps, changes = _build_steps(minion, tag, files_path, tracker, compression, exclude, path_is_file)
    changes["seeding"] = {"old": False, "new": True}
    steps.append(_step("seed_start", "seeding", changes["seeding"], fields=("pid", "infohash", "nonce"), tag=tag))
    return _plan((f"{tag} would be packed and " if build else f"{tag} would be ") + "seeded", steps, changes)


def _stopped(minion, role, call, name, none_comment, tag_comment):
    """Plan of a state that wants no ``role`` process for ``name`` (a tag, or ``all``)."""
    tag = None if name == "all" else validate_tag(name)
    running = sorted(_running(minion, role, tag))
    if not running:
        return _plan(none_comment if tag is None else tag_comment.format(tag=tag))
    changes = {"stopped": running}
    verb = "Seeding would stop" if role == "seeder" else "Peers would stop"
    return _plan(f"{verb} for {', '.join(running)}", [_step(call, "stopped", running, tag=tag)], changes)


def seeding_stopped(minion, name):
    return _stopped(minion, "seeder", "seed_stop", name, "No tag is being seeded", "{tag} is already not being seeded")


def peer_stopped(minion, name):
    return _stopped(minion, "peer", "peer_stop", name, "No lssd peer is running", "No peer of {tag} is running")


def archive_absent(minion, name):
    tag = validate_tag(name)
    found = inventory.rm_tgz(minion, tag, test=True)
    if not found["changed"]:
        return _plan(f"No archive or torrent of {tag} is left")
    changes = {"removed": found["removed"]}
    return _plan(found["comment"], [_step("rm_tgz", "removed", found["removed"], field="removed", tag=tag)], changes)


def absent(minion, name, destination_path=None, force=False):
    tag = validate_tag(name)
    force = check("force", force, "force")
    found = inventory.uninstall(minion, tag, destination_path=destination_path, force=force, test=True)
    if not found["changed"]:
        return _plan(f"{tag} is already absent")
    changes = {"removed": {k: found[k] for k in ("target", "links", "files", "record") if found[k]}}
    where = f" from {found['target']}" if found["target"] else ""
    step = _step("uninstall", "removed", changes["removed"], fields=("target", "links", "files", "record"),
                 tag=tag, destination_path=destination_path, force=force)
    return _plan(f"{tag} would be removed{where}", [step], changes)


def deployed(minion, name, torrent=None, force=None, current=None, keep=None, test=False, **peer_args):
    """``peer_args``: destination_path, timeout, linger, no_tag_directory,
    unsafe_please_delete, owner, group, mode (as ``deploy.peer`` takes them)."""
    tag = validate_tag(name)
    where = inventory.target(minion, tag, peer_args.get("destination_path"), peer_args.get("no_tag_directory"))
    link, keep = minion.setting("current", current), minion.setting("keep", keep)
    if where["no_tag_directory"] and (link or keep):
        raise LssdError("current and keep need one directory per tag; they cannot be used with no_tag_directory")
    peer_args.update(destination_path=where["destination_path"], no_tag_directory=where["no_tag_directory"])
    # Refuses a non-symlink in the way of the link before a single byte moves.
    switched = link and inventory.switch_current(minion, tag, where["destination_path"], link=link, test=True)
    force = minion.setting("force", force)
    steps, changes, comments = _deploy_steps(minion, tag, where, torrent, force, test, peer_args)
    if link:
        if switched["changed"]:
            changes["current"] = {"old": switched["old"], "new": tag}
            comments.append(switched["comment"])
            steps.append(_step("switch_current", "current", changes["current"], tag=tag,
                               destination_path=where["destination_path"], link=link))
    if keep:
        pruned = inventory.prune(minion, keep, where["destination_path"], newest=tag, link=link, test=True)
        if pruned["changed"]:
            changes["removed"] = pruned["remove"]
            comments.append(pruned["comment"])
            steps.append(_step("prune", "removed", changes["removed"], field="remove", keep=keep,
                               destination_path=where["destination_path"], newest=tag))
    if not steps:
        return _plan(comments[0] if comments else f"{tag} is already deployed")
    return _plan("; ".join(comments), steps, changes)


def _deploy_steps(minion, tag, where, torrent, force, test, peer_args):
    """The download part of ``deployed``: (steps, changes, comments)."""
    record = inventory.installed(minion, tag)
    if record and record.get("target") != where["target"]:
        record = None  # installed elsewhere: this destination does not hold it
    # A dry run reports what is published now; a real one in an orchestrated run waits for
    # the run's torrent, as the peers start while the seeder still packs.
    wanted = deploy.lookup(minion, tag, torrent=torrent, missing_ok=True, wait=not test)
    if not wanted["published"]:
        if record:
            return [], {}, [f"{tag} is already deployed (no seeder publishes it now; the installed build stands)"]
        if not test:
            raise LssdError(wanted["comment"])
        changes = {"deployed": {"target": where["target"], "sha256": None, "bytes": None}}
        comment = f"would download {tag} to {where['target']} once a seeder publishes it ({wanted['comment']})"
        return [_step("peer", "deployed", changes["deployed"])], changes, [comment]
    if record and wanted["sha256"] == record.get("sha256"):
        return [], {}, []
    changes = {"deployed": {"target": where["target"], "sha256": wanted["sha256"], "bytes": wanted["size"]}}
    steps = []
    if record:
        if not force:
            raise LssdError(
                f"{tag} is installed in {where['target']} with SHA-256 {record.get('sha256')}, but the "
                f"published build of {tag} has SHA-256 {wanted['sha256']}; set force: True to "
                "replace it (or deploy the new build under a new tag)"
            )
        changes["sha256"] = {"old": record.get("sha256"), "new": wanted["sha256"]}
        # deploy.peer, under the tag's lock, stops a peer of the old build and drops its archive.
        peer_args["unsafe_please_delete"] = True
        comment = f"would replace {tag} in {where['target']} (force): download {wanted['size']} bytes"
    else:
        options = {k: peer_args.get(k) for k in ("no_tag_directory", "unsafe_please_delete", "owner", "group", "mode")}
        install.check(where["destination_path"], tag, **deploy.install_options(minion, **options))
        comment = f"would download {tag} ({wanted['size']} bytes) to {where['target']}"
    extra = {"sha256": changes["sha256"]} if "sha256" in changes else None
    steps.append(_step("peer", "deployed", changes["deployed"], fields=DEPLOYED_FIELDS, extra=extra, tag=tag,
                       torrent=torrent, **peer_args))
    return steps, changes, [comment]


def _installed_in(minion, destination):
    """The tags lssd installed as ``destination/<tag>`` here, oldest install first."""
    here = [
        (record.get("installed") or 0, tag)
        for tag, record in inventory.installed(minion).items()
        if os.path.normpath(record.get("target", "")) == os.path.join(destination, tag)
    ]
    return [tag for _, tag in sorted(here)]


def rolled_back(minion, name, destination_path=None, rollback_to=None, current=None):
    """Point the ``current`` symlink back at a tag installed in ``destination_path``:
    ``rollback_to``, else the tag installed before the one it points to now. Never a
    download: a tag that is not installed there is refused, naming those that are."""
    destination = os.path.normpath(minion.setting("destination_path", destination_path))
    link = minion.setting("current", current)
    where = f"rollback on minion {minion.id}"
    if not link:
        raise LssdError(
            f"{where}: lssd:current is not set; a rollback switches the current symlink, so set "
            "lssd:current to true (or a link name)"
        )
    rollback_to = minion.setting("rollback_to", rollback_to)
    names = _installed_in(minion, destination)
    listed = f"(installed there: {', '.join(names) or 'none'})"
    now = releases.read_link(destination, link)
    now = os.path.basename(os.path.normpath(now)) if now else None
    if rollback_to is not None:
        if rollback_to not in names:
            raise LssdError(
                f"{where}: {rollback_to} is not installed in {destination} {listed}; a rollback never "
                "downloads: deploy it with lssd.orch.deploy instead"
            )
        to = rollback_to
    else:
        before = names[: names.index(now)] if now in names else [n for n in names if n != now]
        if not before:
            raise LssdError(
                f"{where}: no tag older than {now or 'the current one'} is kept in {destination} {listed}; "
                "name one with lssd:rollback_to, or keep more (lssd:keep)"
            )
        to = before[-1]
    path = os.path.join(destination, link)
    if to == now:
        return _plan(f"{path} already points to {to}")
    changes = {"current": {"old": now, "new": to}}
    step = _step("switch_current", "current", changes["current"], tag=to, destination_path=destination, link=link)
    return _plan(f"{path} would point to {to} (from {now or 'nothing'})", [step], changes)


def plan(minion, state, name, test=False, **kwargs):
    """The plan of the state ``state`` for ``name`` (see the module docstring), with the
    ``warnings`` of unknown pillar keys under ``lssd:``."""
    if state not in STATES:
        raise LssdError(f"state {state!r} is unknown; allowed: {', '.join(STATES)}")
    # A state that only stops something does not read the settings a typo would miss, and
    # stopping must work whatever the pillar holds.
    try:
        warnings = minion.settings.check_keys() if state in _READS_SETTINGS else []
        if state == "deployed":
            kwargs["test"] = test
        return dict(globals()[state](minion, name, **kwargs), warnings=warnings)
    except LssdError as exc:
        # A peer refused before its download (owner, a full target, a misspelt key) says so
        # on the event bus as a failed download does; a dry run only predicts, so it is quiet.
        if state == "deployed" and not test:
            deploy.fire_failed(minion, name, exc, refused=True)
        raise


_READS_SETTINGS = ("tracker_running", "torrent_made", "seeding", "deployed", "absent", "rolled_back")
STATES = ("tracker_running", "tracker_stopped", "torrent_made", "seeding", "seeding_stopped", "deployed", "absent",
          "peer_stopped", "archive_absent", "rolled_back")
