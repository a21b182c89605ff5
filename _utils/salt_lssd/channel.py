"""The run channel: how a planned run's torrent and credentials reach its minions, and no others.

A run planned on the master (``runner.plan``: the orchestrate and ``salt-run lssd.deploy``)
resolves its targets once and registers them here, under the master's cachedir::

    <cachedir>/lssd/runs/<run_id>/run.json           tag, app, seeders, trackers
    <cachedir>/lssd/runs/<run_id>/members/<minion>   one empty file per targeted minion

The master's ``lssd`` ext_pillar (``_pillar/lssd.py``) calls :func:`serve` while it renders a
minion's pillar. A member of the run whose pillar names the run (``lssd:run_id``, which the run
hands every role through ``pillar=``) gets, under pillar key ``lssd_run``, the entries the run's
seeders and trackers published to the mine for this run: read straight from the master's mine
cache by their minion ids, so only the targeted seeder's entry is ever served, and only one
published for this run. Salt encrypts a pillar to the minion it is rendered for, so no other
minion can read it. Every step is a file lookup by name: the master's work per read does not
grow with the number of accepted minions (the mine's ``allow_tgt`` check lists every accepted
key and reads every minion's grains on each read).

Outside a planned run (manual ``lssd.seed_start`` / ``lssd.peer``, a masterless minion) the
entries are read from the mine as before (``mine``).
"""

import os
import shutil
import time

from salt_lssd import LssdError
from salt_lssd.common import ensure_dir, read_json, write_json_atomic
from salt_lssd.settings import check

# The pillar key the ext_pillar serves a run's entries under; outside pillar ``lssd`` so that
# it is never taken for a setting.
PILLAR_KEY = "lssd_run"
# The name the ext_pillar module loads under (master config: ext_pillar: [{lssd: {}}]).
EXT_PILLAR = "lssd"
# A run's record matters while its roles run, which its timeouts bound; records older than
# this are removed whenever a new run is registered (a run interrupted before its end).
RUN_RECORD_SECONDS = 2 * 86400


def runs_dir(opts):
    return os.path.join(opts["cachedir"], "lssd", "runs")


def _run_dir(opts, run_id):
    # A run id is a name, never a path (settings' check).
    if run_id in (None, ""):
        raise LssdError("no run id")
    return os.path.join(runs_dir(opts), check("run_id", run_id, "run id"))


def configured(opts):
    """LssdError unless the master renders pillars with the ``lssd`` ext_pillar."""
    names = [next(iter(item)) for item in opts.get("ext_pillar") or [] if isinstance(item, dict) and item]
    if EXT_PILLAR not in names:
        raise LssdError(
            "the master does not serve lssd's run channel: add the lssd ext_pillar to the master's "
            "configuration (e.g. /etc/salt/master.d/lssd.conf holding 'ext_pillar: [{lssd: {}}]'; "
            "with the file_roots install also run 'salt-run saltutil.sync_pillar') and restart "
            "salt-master. It hands each run's torrent to that run's minions only"
            + (f"; ext_pillar now names {', '.join(names)}" if names else "")
        )


def register(opts, run_id, tag, app, roles):
    """Record run ``run_id`` on the master: ``roles`` maps tracker, seeder, peer to minion ids."""
    _prune(opts)
    base = _run_dir(opts, run_id)
    members = os.path.join(base, "members")
    ensure_dir(members)
    for minion in {m for ids in roles.values() for m in ids}:
        with open(os.path.join(members, minion), "wb"):
            pass
    write_json_atomic(os.path.join(base, "run.json"), {
        "run_id": run_id, "tag": tag, "app": app, "seeders": sorted(roles["seeder"]),
        "trackers": sorted(roles["tracker"]), "registered": time.time(),
    })


def forget(opts, run_id):
    """Remove run ``run_id``'s record: its minions are served nothing more for it."""
    shutil.rmtree(_run_dir(opts, run_id), ignore_errors=True)
    return {"run_id": run_id, "forgotten": True}


def _prune(opts):
    older = time.time() - RUN_RECORD_SECONDS
    try:
        entries = list(os.scandir(runs_dir(opts)))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime < older:
                shutil.rmtree(entry.path, ignore_errors=True)
        except FileNotFoundError:
            pass


def serve(opts, minion_id, pillar, mine_cache):
    """What the ext_pillar adds to ``minion_id``'s pillar: the entries of the run its pillar
    names, if it is one of that run's minions; else nothing. ``mine_cache(minion)`` reads a
    minion's mine from the master's cache."""
    run_id = ((pillar or {}).get("lssd") or {}).get("run_id") if isinstance(pillar, dict) else None
    try:
        base = _run_dir(opts, run_id)
    except LssdError:
        return {}
    if "/" in str(minion_id) or not os.path.exists(os.path.join(base, "members", str(minion_id))):
        return {}
    run = read_json(os.path.join(base, "run.json"))
    if not run:
        return {}
    from salt_lssd.mine import TRACKER, torrent_alias  # pylint: disable=import-outside-toplevel

    wanted = [(who, torrent_alias(run["tag"], run["app"]), run_id) for who in run["seeders"]]
    wanted += [(who, TRACKER, None) for who in run["trackers"]]
    published = {}
    for who, alias, for_run in wanted:
        entry = _unwrap((mine_cache(who) or {}).get(alias))
        # A torrent entry carries its run's passkey and key: only this run's is served.
        if isinstance(entry, dict) and (for_run is None or entry.get("run_id") == for_run):
            published.setdefault(who, {})[alias] = entry
    return {PILLAR_KEY: {"run_id": run_id, "published": published}}


def _unwrap(value):
    # mine.send with allow_tgt stores {"__data__": entry, "__saltmine_acl__": 1, "allow_tgt": ...}
    if isinstance(value, dict) and "__saltmine_acl__" in value:
        return value.get("__data__")
    return value


def published(minion, run_id, alias, fresh=True):
    """``{minion: entry}`` that run ``run_id``'s channel serves this minion for ``alias``. The
    job's own pillar holds what was published when the job started; with ``fresh`` the master
    is asked again when that lacks ``alias`` (a wait for the seeder, a publish confirmed)."""
    found = _pick(minion.run_pillar(run_id, fresh=False), alias)
    if not found and fresh:
        found = _pick(minion.run_pillar(run_id, fresh=True), alias)
    return found


def _pick(served, alias):
    return {m: by_alias[alias] for m, by_alias in (served or {}).items()
            if isinstance(by_alias, dict) and alias in by_alias}
