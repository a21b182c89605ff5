#!/usr/bin/env python3
"""What TLS between peers costs: one seeder and one peer on loopback, uncapped, the same
build with ``lssd:ssl`` on and off, alternating. Prints MB/s and CPU seconds of both processes.

    .venv/bin/python bench/ssl_cost.py --size-mb 200 --repeat 3
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "unit"))

from lssd_testutil import free_port, make_build_tree  # noqa: E402
from salt_lssd import deploy, mine, procs, seeder, tracker_role  # noqa: E402
from test_workflows import Fleet  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(root, build, ssl):
    fleet = Fleet(root)
    port = free_port()
    tracker = fleet.minion("tr")
    procs.spawn("tracker", tracker.layout.run_dir("tracker"),
                {"bind": "127.0.0.1", "port": port, "state_dir": tracker.layout.root})
    seed = fleet.minion("s", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": port},
                        ssl=ssl, compression="none")
    made = seeder.create_torrent(seed, "T1")
    tracker_role.allow(tracker, made["torrent"])
    seeder.seed_start(seed, "T1", publish=False)
    fleet.mine.setdefault(mine.torrent_alias("T1"), {})["s"] = seeder.published(seed, "T1")
    peer = fleet.minion("p", destination_path=os.path.join(root, "dest"), linger=5, progress_interval=0)
    seeder_pid = procs.pid_of(seed.layout.run_dir("seeder", "T1"))
    cpu0 = cpu_seconds(seeder_pid)
    summary = deploy.peer(peer, "T1")
    peer_pid = procs.pid_of(peer.layout.run_dir("peer", "T1"))
    cpu = cpu_seconds(seeder_pid) - cpu0 + (cpu_seconds(peer_pid) if peer_pid else 0)
    for who, role, tag in ((peer, "peer", "T1"), (seed, "seeder", "T1"), (tracker, "tracker", None)):
        procs.stop(who.layout.run_dir(role, tag))
    return {"ssl": ssl, "bytes": summary["bytes"], "seconds": summary["seconds"],
            "mb_s": round(summary["bytes"] / summary["seconds"] / 1e6, 1), "cpu_s": round(cpu, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        build = make_build_tree(os.path.join(work, "build"), data_mb=args.size_mb)
        for i in range(args.repeat):
            for ssl in (True, False):
                with tempfile.TemporaryDirectory(dir=work) as root:
                    print(json.dumps(dict(one_run(root, build, ssl), run=i)), flush=True)
                time.sleep(0)


if __name__ == "__main__":
    main()
