"""``python bench/variant.py <role> <run_dir>``: ``python -m salt_lssd`` with experimental swarm knobs.

The benchmark uses this only when a run asks for a knob that ``swarm.py`` has no tunable for
yet, to measure a proposed change before anyone writes it into the data plane. The knobs come
from the ``bench`` key of the role's config.json (``swarm.py`` ignores unknown keys):

- ``super_seeding`` (seeder): BEP 16 super-seeding (``torrent_flags.super_seeding``);
- ``slice: [k, n]`` (peer): peer k of n gives the k-th n-th of the piece space top priority, so
  the seeder's first copy of each piece goes to one peer and the others get it from that peer;
  ``rest_priority`` (default 4) is the priority of the other pieces;
- ``no_seed_mode`` (seeder): check the archive at start instead of trusting it (seed_mode off);
- ``cached_count`` (peer): count bytes from the seeder without a ``torrent_file()`` call per block;
- ``peer_log`` (both): copy every libtorrent alert, peer log included, to ``RUN_DIR/alerts.log``.

Everything else is ``salt_lssd.swarm`` unchanged: same settings, same loops, same state.json.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "salt", "_utils"))

from salt_lssd import __main__ as lssd_main  # noqa: E402
from salt_lssd import swarm  # noqa: E402


def run(role, reporter):
    import libtorrent as lt

    config = reporter.config
    knobs = config.get("bench") or {}
    with open(config["torrent"], "rb") as fh:
        ti = lt.torrent_info(lt.bdecode(fh.read()))
    ses = lt.session(swarm.settings(role, config.get("listen", "0.0.0.0:0"), config.get("settings")))
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = config["save_path"]
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    if role == "seeder":
        if not knobs.get("no_seed_mode"):
            atp.flags |= lt.torrent_flags.seed_mode
        if knobs.get("super_seeding"):
            atp.flags |= lt.torrent_flags.super_seeding
    elif knobs.get("slice"):
        k, n = knobs["slice"]
        pieces = ti.num_pieces()
        lo, hi = k * pieces // n, (k + 1) * pieces // n
        prios = [int(knobs.get("rest_priority", 4))] * pieces
        for i in range(lo, hi):
            prios[i] = 7
        atp.piece_priorities = prios
    handle = ses.add_torrent(atp)
    if knobs.get("cached_count"):
        swarm._Loop.count_block = _cached_count_block
    if knobs.get("peer_log"):
        ses.apply_settings({"alert_mask": ses.get_settings()["alert_mask"]
                            | lt.alert.category_t.peer_log_notification
                            | lt.alert.category_t.peer_notification
                            | lt.alert.category_t.connect_notification})
        ses = _log_alerts(ses, os.path.join(reporter.run_dir, "alerts.log"))
    loop = swarm._SeederLoop if role == "seeder" else swarm._PeerLoop
    loop(reporter, ses, handle, config, ses.listen_port()).run()


def _log_alerts(ses, path):
    """Copy every alert's message into ``path`` (wall time first) as the loop pops them."""
    import time

    fh = open(path, "a", buffering=1)
    pop = ses.pop_alerts

    class Logged:
        def __getattr__(self, name):
            return getattr(ses, name)

        def pop_alerts(self):
            alerts = pop()
            for alert in alerts:
                fh.write(f"{time.time():.3f} {type(alert).__name__} {alert.message()}\n")
            return alerts

    return Logged()


def _cached_count_block(self, alert):
    """swarm._Loop.count_block without a torrent_file() call per block from the seeder."""
    if alert.pid.to_bytes().startswith(swarm._SEEDER_PID):
        sizes = getattr(self, "_piece_sizes", None)
        if sizes is None:
            ti = self.handle.torrent_file()
            last = ti.num_pieces() - 1
            sizes = self._piece_sizes = (ti.piece_length(), last, ti.piece_size(last))
        piece_size = sizes[2] if alert.piece_index == sizes[1] else sizes[0]
        self.from_seeder += min(swarm._BLOCK, piece_size - alert.block_index * swarm._BLOCK)


swarm.run = run

if __name__ == "__main__":
    sys.exit(lssd_main.main(sys.argv))
