"""The tracker role on a minion: start and stop the detached tracker, say where it is,
register torrents with it, and read its view of the swarms.

The tracker process itself is ``salt_lssd.tracker``; this module is what a Salt job does
around it (pillar defaults, the mine entry ``lssd_tracker``).
"""

import logging
import os

from salt_lssd import LssdError, mine, procs, tracker
from salt_lssd import torrent as metainfo
from salt_lssd.common import validate_tag
from salt_lssd.settings import check, number

log = logging.getLogger(__name__)


def start(minion, port=None, bind=None, interval=None):
    """Start the tracker (a no-op if it runs) and publish its announce URL to the mine."""
    minion.settings.check_keys()
    layout = minion.layout
    run_dir = layout.run_dir("tracker")
    port = minion.setting("tracker:port", port)
    bind = minion.setting("tracker:bind", bind)
    current = procs.state(run_dir)
    if current["running"]:
        return dict(current, changed=False, comment=f"tracker already running (pid {current.get('pid')})")
    config = {"bind": bind, "port": port, "state_dir": layout.root,
              "forget_after": minion.setting("tracker:forget_after")}
    if interval is not None:
        config["interval"] = int(number(interval, "interval", 1))
    started = procs.spawn("tracker", run_dir, config)
    started.update(changed=True, comment=f"tracker started on {bind}:{port}")
    url = address(minion)["url"]
    try:
        mine.publish(minion, mine.TRACKER, "lssd.tracker_address", lambda entry: entry.get("url") == url, 30,
                     run_id=minion.setting("run_id"))
    except Exception as exc:  # pylint: disable=broad-except
        # Only seeders without pillar lssd:tracker:host need the mine entry; say so, go on.
        log.warning("lssd: could not publish the tracker address to the mine: %s", exc)
        started["comment"] += f"; not published to the mine ({exc})"
    return started


def address(minion):
    """The announce URL of the tracker running here: pillar lssd:tracker:host, else the
    address it binds to, else this minion's first non-loopback IPv4 address."""
    current = procs.state(minion.layout.run_dir("tracker"))
    port = current.get("port") or minion.setting("tracker:port")
    host = minion.setting("tracker:host")
    if not host:
        bind = current.get("bind")
        if bind and bind not in ("0.0.0.0", "::"):
            host = bind
        else:
            addrs = [a for a in minion.grains.get("ipv4", []) if not a.startswith("127.")]
            host = addrs[0] if addrs else "127.0.0.1"
    return {"url": metainfo.announce_url(host, port), "host": host, "port": int(port)}


def stop(minion):
    pid = procs.stop(minion.layout.run_dir("tracker"))
    minion.mine_delete(mine.TRACKER)
    if pid is None:
        return {"changed": False, "comment": "tracker was not running"}
    return {"changed": True, "pid": pid, "comment": f"tracker stopped (pid {pid})"}


def status(minion):
    run_dir = minion.layout.run_dir("tracker")
    current = procs.state(run_dir)
    if not current["running"]:
        return {"running": False, "comment": "tracker is not running"}
    data = tracker.fetch_status(current.get("bind", "127.0.0.1"), current["port"], run_dir=run_dir)
    data.update(running=True, pid=current.get("pid"), port=current["port"], bind=current.get("bind"))
    return data


def _torrent_info(minion, ref, seeder=None):
    """(tag, torrent info) of a .torrent path, or of a tag made here or published in the mine."""
    if os.path.isfile(ref):
        with open(ref, "rb") as fh:
            info = metainfo.read_torrent(fh.read())
        return info.get("tag") or os.path.splitext(os.path.basename(ref))[0], info
    tag = validate_tag(ref)
    local = minion.layout.torrent(tag)
    if os.path.isfile(local):
        with open(local, "rb") as fh:
            return tag, metainfo.read_torrent(fh.read())
    return tag, mine.lookup_torrent(minion, tag, seeder=seeder)["info"]


def allow(minion, ref, seeder=None, run_id=None, wait=None):
    """Register the torrent ``ref`` (path or tag) with the tracker, which serves nothing else.

    With ``run_id`` (the orchestrate's), the torrent is the one the seeder published for that
    run, awaited up to ``wait`` seconds (default lssd:job_timeout): the orchestrate starts
    this step while the seeder still packs."""
    if ref is None:
        raise LssdError("tracker_allow needs a .torrent path or a tag")
    minion.settings.check_keys()
    if run_id is not None:
        run_id = check("run_id", run_id, "run_id")
        tag = validate_tag(ref)
        wait = minion.setting("job_timeout", wait)
        info = mine.await_torrent(minion, tag, run_id, wait, seeder=seeder)["info"]
    else:
        tag, info = _torrent_info(minion, str(ref), seeder)
    result = tracker.allow(minion.layout.root, info["infohash"], tag, passkey=tracker.passkey_of(info["tracker"]),
                           app=minion.app)
    return dict(result, tag=tag, infohash=info["infohash"])
