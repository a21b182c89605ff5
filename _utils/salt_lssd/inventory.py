"""What a minion holds for lssd, and taking it away: install records, where a tag goes,
the ``current`` symlink, removing tags (one, or all but the newest few), archives, status.

Records (``installed/<tag>.json``, one set per app namespace) say what ``deploy.peer``
installed and where; only tags with a record count as lssd's, so nothing else in a
destination is ever touched.
"""

import os
import shutil
import time

from salt_lssd import LssdError, install, pack, procs, releases
from salt_lssd import torrent as metainfo
from salt_lssd.common import Layout, read_json, validate_tag, write_json_atomic


def record(minion, tag, summary):
    write_json_atomic(minion.layout.installed_record(tag), dict(summary, installed=time.time()))


def installed(minion, tag=None):
    """``{tag: record}`` of the tags installed here and still in place (one record for ``tag``)."""
    layout = minion.layout
    if tag is not None:
        names = [validate_tag(tag) + ".json"]
    elif os.path.isdir(layout.installed):
        names = sorted(n for n in os.listdir(layout.installed) if n.endswith(".json"))
    else:
        names = []
    found = {}
    for name in names:
        data = read_json(os.path.join(layout.installed, name))
        if data and os.path.isdir(data.get("target", "")):
            found[name[: -len(".json")]] = data
    return found.get(tag) if tag is not None else found


def forget(minion, tag):
    try:
        os.unlink(minion.layout.installed_manifest(tag))
    except FileNotFoundError:
        pass
    path = minion.layout.installed_record(tag)
    if os.path.exists(path):
        os.unlink(path)
        return True
    return False


def target(minion, tag, destination_path=None, no_tag_directory=None):
    """Where ``tag`` goes: ``tag``, ``destination_path``, ``no_tag_directory``, ``target``."""
    tag = validate_tag(tag)
    destination_path = minion.setting("destination_path", destination_path)
    no_tag_directory = minion.setting("no_tag_directory", no_tag_directory)
    # unsafe_please_delete: only the path is wanted here, not the refusal of a full target.
    plan = install.check(destination_path, tag, no_tag_directory=no_tag_directory, unsafe_please_delete=True)
    return {
        "tag": tag,
        "destination_path": destination_path,
        "no_tag_directory": no_tag_directory,
        "target": plan["target"],
    }


def switch_current(minion, tag, destination_path=None, link=None, test=False):
    tag = validate_tag(tag)
    destination_path = minion.setting("destination_path", destination_path)
    link = releases.check_link_name(link or releases.DEFAULT_LINK, tag)
    switched = releases.switch(destination_path, tag, link=link, dry_run=test)
    if switched["changed"] and not test:
        minion.refresh_grains()
    verb = "would point" if test else "pointed"
    comment = f"{verb} {switched['link']} to {tag}" if switched["changed"] else f"{switched['link']} points to {tag}"
    return dict(switched, comment=comment)


def archive_files(minion, tag):
    """The archive and torrent files of ``tag`` here (what rm_tgz removes): exact names only,
    never a prefix match that would catch another tag's files (``v1`` vs ``v1.2``)."""
    layout = minion.layout
    names = {tag + pack.archive_suffix(compression) for compression in pack.COMPRESSIONS}
    made = read_json(layout.torrent_meta(tag)) or {}
    for kept in ("archive", "manifest"):  # a tree-mode seeder keeps the manifest, never the tree
        if made.get(kept):
            names.add(os.path.basename(made[kept]))
    if os.path.isfile(layout.torrent(tag)):
        with open(layout.torrent(tag), "rb") as fh:
            try:
                names.add(metainfo.read_torrent(fh.read())["name"])
            except LssdError:
                pass
    candidates = [layout.torrent(tag), layout.torrent_meta(tag)]
    candidates += [os.path.join(where, name) for where in (layout.archives, layout.downloads) for name in sorted(names)]
    return [path for path in candidates if os.path.isfile(path)]


def _refuse_running(minion, tag, roles=("peer", "seeder")):
    for role in roles:
        current = procs.state(minion.layout.run_dir(role, tag))
        if current["running"]:
            raise LssdError(
                f"{role} for tag {tag!r} is still running (pid {current.get('pid')}): "
                f"stop it first (lssd.{'peer_stop' if role == 'peer' else 'seed_stop'} {tag})"
            )


def _secrets(minion, tag):
    """The deploy's certificate and key kept for ``tag``: the seeder's and a peer's copy."""
    layout = minion.layout
    found = [layout.credentials(tag)] if os.path.isdir(layout.credentials(tag)) else []
    run_dir = layout.run_dir("peer", tag)
    return found + [os.path.join(run_dir, n) for n in ("ssl-cert.pem", "ssl-key.pem", "ssl-dh.pem")
                    if os.path.isfile(os.path.join(run_dir, n))]


def rm_tgz(minion, tag, test=False):
    """Remove the archive, torrent and deploy key of ``tag``; refused while a process seeds
    or fetches it."""
    tag = validate_tag(tag)
    _refuse_running(minion, tag)
    files = archive_files(minion, tag)
    secrets = _secrets(minion, tag)
    if not test:
        for path in files:
            os.unlink(path)
        for path in secrets:
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    verb = "would remove" if test else "removed"
    return {"changed": bool(files), "removed": files,
            "comment": f"{verb} {len(files)} files" if files else f"nothing of {tag} to remove"}


def _installed_tree(minion, tag, destination_path):
    """The tree ``tag`` occupies: its record's target, else ``destination_path/<tag>``."""
    data = read_json(minion.layout.installed_record(tag))
    if data and data.get("target"):
        tree = os.path.normpath(data["target"])
    else:
        try:
            tree = os.path.join(minion.setting("destination_path", destination_path), tag)
        except LssdError:
            return None
    return tree if os.path.lexists(tree) else None


def uninstall(minion, tag, destination_path=None, force=False, test=False):
    """Remove ``tag``: its tree, archive, torrent and record (a lingering peer is stopped)."""
    tag = validate_tag(tag)
    # Refused before anything, test mode included: the archive may not go while it is seeded.
    _refuse_running(minion, tag, roles=("seeder",))
    tree = _installed_tree(minion, tag, destination_path)
    links = []
    if tree is not None:
        if os.path.basename(tree) != tag and not force:
            raise LssdError(
                f"{tag} was installed into {tree!r} itself (no_tag_directory), which may hold more "
                f"than the tag; set force: True to delete {tree!r}"
            )
        links = releases.remove(tree, force=force, dry_run=True)
    files = archive_files(minion, tag)
    has_record = os.path.exists(minion.layout.installed_record(tag))
    result = {"changed": bool(tree or files or has_record), "tag": tag, "target": tree,
              "links": links, "files": files, "record": has_record}
    if not result["changed"]:
        return dict(result, comment=f"nothing of {tag} to remove")
    if test:
        return dict(result, comment=f"would remove {tag}")
    # Archive first: rm_tgz refuses while this minion seeds the tag, before anything is gone.
    procs.stop_each("peer", minion.layout.run_dirs("peer", tag), tag)
    rm_tgz(minion, tag)
    if tree is not None:
        releases.remove(tree, force=force)
    forget(minion, tag)
    minion.fire(f"lssd/peer/{tag}/removed", {"tag": tag, "app": minion.app, "target": tree})
    minion.refresh_grains()
    return dict(result, comment=f"removed {tag}")


def prune(minion, keep, destination_path=None, newest=None, link=None, test=False):
    """Keep the ``keep`` newest tags lssd installed in ``destination_path``; remove the rest."""
    destination_path = minion.setting("destination_path", destination_path)
    if newest is not None:
        validate_tag(newest)
    plan = releases.prune_plan(installed(minion), destination_path, keep, newest=newest, link=link if test else None)
    plan.pop("targets")
    if not test:
        for tag in plan["remove"]:
            uninstall(minion, tag, destination_path)
    if plan["remove"]:
        comment = ("would remove " if test else "removed ") + ", ".join(plan["remove"])
    else:
        comment = f"no more than {len(plan['keep'])} tags in {destination_path}"
    return dict(plan, changed=bool(plan["remove"]), comment=comment)


def status(minion):
    """Every lssd process here (role, tag, app, pid, status, progress...), of every app
    namespace, and the tags installed in this minion's namespace (``app``)."""
    layout = minion.layout
    processes, seen = [], set()
    for app in [None] + layout.apps():
        for (role, tag), run_dir in Layout(layout.root, app).run_dirs().items():
            if run_dir not in seen:  # the tracker shows in every namespace; list it once
                seen.add(run_dir)
                owner = None if role == "tracker" else app
                processes.append(dict(procs.state(run_dir), role=role, tag=tag, app=owner))
    return {"state_dir": layout.root, "app": layout.app, "processes": processes,
            "installed": sorted(installed(minion))}
