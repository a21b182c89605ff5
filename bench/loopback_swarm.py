#!/usr/bin/env python3
"""Loopback swarm: one tracker, one seeder and N peers on 127.0.0.1, no Salt, no caps.

Measures the data plane alone on this machine: time until the last peer has the archive and
what the seeder uploaded as a multiple of the archive size. Unlike bench/run (namespaces,
capped links) nothing limits bandwidth here, so this mostly measures CPU per byte.

    .venv/bin/python bench/loopback_swarm.py --peers 8 --size-mb 100
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_utils"))

from lab import CpuSampler  # noqa: E402  (bench/lab.py, beside this file)
from salt_lssd import common, procs, tracker  # noqa: E402
from salt_lssd import torrent as metainfo  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="lssd-loopback-")
    run_dirs = []
    try:
        seeder = common.Layout(os.path.join(work, "seeder"))
        common.ensure_dir(seeder.archives)
        archive = os.path.join(seeder.archives, "Bench1.tar")
        with open(archive, "wb") as fh:
            fh.write(os.urandom(int(args.size_mb * (1 << 20))))
        size = os.path.getsize(archive)

        tracker_dir = os.path.join(work, "tracker")
        run = os.path.join(tracker_dir, "run", "tracker")
        run_dirs.append(run)
        state = procs.spawn("tracker", run, {"bind": "127.0.0.1", "port": 0, "state_dir": tracker_dir})
        port = state["port"]
        made = metainfo.make_torrent(
            archive, seeder.torrent("Bench1"), metainfo.announce_url("127.0.0.1", port), lssd={"tag": "Bench1"}
        )
        tracker.allow(tracker_dir, made["infohash"], "Bench1")

        run = seeder.run_dir("seeder", "Bench1")
        run_dirs.append(run)
        procs.spawn("seeder", run, {"torrent": made["torrent"], "save_path": seeder.archives, "tag": "Bench1"})
        busy0, total0, _ = CpuSampler.read()
        start = time.time()
        peers = []
        for i in range(args.peers):
            layout = common.Layout(os.path.join(work, f"peer{i}"))
            common.ensure_dir(layout.archives)
            run = layout.run_dir("peer", "Bench1")
            run_dirs.append(run)
            peers.append(run)
            procs.spawn(
                "peer",
                run,
                {"torrent": made["torrent"], "save_path": layout.archives, "tag": "Bench1",
                 "linger": 60, "timeout": args.timeout},
            )
        deadline = time.monotonic() + args.timeout
        finished = {}
        while len(finished) < len(peers) and time.monotonic() < deadline:
            for run in peers:
                st = procs.state(run)
                if run not in finished and st.get("finished"):
                    finished[run] = st["finished"]
            time.sleep(0.2)
        busy1, total1, _ = CpuSampler.read()
        if len(finished) < len(peers):
            print(f"only {len(finished)} of {len(peers)} peers finished within {args.timeout}s")
            return 1
        times = sorted(t - start for t in finished.values())
        procs.stop(seeder.run_dir("seeder", "Bench1"))  # its last report has the final total
        uploaded = procs.state(seeder.run_dir("seeder", "Bench1")).get("uploaded", 0)
        cpu = (busy1 - busy0) / max(1, total1 - total0)
        print(f"peers={args.peers} size={size / 1e6:.0f}MB piece={made['piece_size'] // 1024}KiB")
        print(f"T_first={times[0]:.2f}s T_median={statistics.median(times):.2f}s T_last={times[-1]:.2f}s")
        print(f"seeder upload = {uploaded / size:.2f} x archive size; CPU busy {cpu:.0%} of all cores")
        for run in peers:
            st = procs.state(run)
            print(f"  {os.path.basename(os.path.dirname(os.path.dirname(run)))}: {st.get('seconds')}s "
                  f"from seeder {st.get('from_seeder')} + from peers {st.get('from_peers')} "
                  f"= {(st.get('from_seeder', 0) + st.get('from_peers', 0)) / size:.3f} x archive")
        print(f"aggregate delivered {args.peers * size / times[-1] / 1e6:.0f} MB/s")
        return 0
    finally:
        for run in reversed(run_dirs):
            procs.stop(run)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
