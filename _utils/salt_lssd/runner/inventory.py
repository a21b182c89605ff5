"""``salt-run lssd.status``: which minion holds which tag, what lssd runs where, and the
tracker's view of each swarm.

Per minion: the tag ``current`` points to, each such symlink, and the installed tags (grains
``lssd_current``, ``lssd_links`` and ``lssd_tags``; ``lssd_apps`` per lssd:app namespace, reloaded first so a rollback or a removal made a moment ago shows), and the lssd
processes running there (``lssd.status``). Per swarm, from ``lssd.tracker_status`` on the
master's ``lssd:targets:tracker``: seeders, leechers and completed downloads.
"""

from salt_lssd.runner.jobs import Bus, succeeded
from salt_lssd.runner.settings import master_pillar


def status(opts, tgt="*", timeout=60):
    """``{"minions": {id: {current, links, tags, running}}, "swarms": {tracker: {tag: counts}}}``."""
    bus = Bus(opts)
    try:
        minions = bus.minions(tgt)
        if not minions:
            return {"minions": {}, "swarms": {}, "comment": f"target {tgt!r} matches no minion the master knows"}
        # refresh_modules with async=False returns once the minion reloaded its grains, so the
        # grains.item job after it reads the grain modules' present answer.
        bus.run(minions, "saltutil.refresh_modules", kwarg={"async": False}, timeout=timeout)
        returns = bus.run(minions, ["grains.item", "lssd.status"],
                          arg=[["lssd_current", "lssd_tags", "lssd_links", "lssd_apps"], []], timeout=timeout)
        found = {minion: _minion(returns[minion]) for minion in minions}
        return {"minions": found, "swarms": _swarms(bus, opts, timeout)}
    finally:
        bus.close()


def _minion(ret):
    value = ret.get("return")
    if not isinstance(value, dict):
        return {"error": succeeded(ret)[1]}
    grains = value.get("grains.item") or {}
    status = value.get("lssd.status")
    entry = {"current": grains.get("lssd_current"), "tags": grains.get("lssd_tags") or [],
             "links": grains.get("lssd_links") or {}}
    if grains.get("lssd_apps"):  # each app namespace's tags and current (lssd:app)
        entry["apps"] = grains["lssd_apps"]
    if isinstance(status, dict):
        entry["running"] = [_process(p) for p in status.get("processes", []) if p.get("running")]
    else:
        entry["error"] = str(status)
    return entry


def _process(process):
    name = process.get("role", "?") + (f" {process['tag']}" if process.get("tag") else "")
    if process.get("app"):
        name += f" (app {process['app']})"
    if process.get("role") == "peer" and process.get("status") == "downloading":
        return f"{name} downloading {process.get('progress', 0):.0f}%"
    return f"{name} {process.get('status') or 'running'}"


def _swarms(bus, opts, timeout):
    """The tracker's counts per tag; empty when the master's pillar names no tracker."""
    lssd = (master_pillar(opts).get("lssd") or {})
    expr = (lssd.get("targets") or {}).get("tracker")
    trackers = bus.minions(expr) if expr else []
    swarms = {}
    for minion, ret in (bus.run(trackers, "lssd.tracker_status", timeout=timeout) if trackers else {}).items():
        value = ret.get("return")
        if not isinstance(value, dict) or not value.get("running"):
            swarms[minion] = {"tracker": "not running"}
            continue
        torrents = value.get("torrents") or {}
        swarms[minion] = {
            _swarm_name(t, infohash): {k: t.get(k) for k in ("seeders", "leechers", "completed")}
            for infohash, t in (torrents.items() if isinstance(torrents, dict) else [])
        }
    return swarms


def _swarm_name(torrent, infohash):
    """``<tag>``, or ``<app>/<tag>`` for a tag of an lssd:app namespace (two apps may share a tag)."""
    tag = torrent.get("tag") or infohash
    return f"{torrent['app']}/{tag}" if torrent.get("app") else tag
