#!/usr/bin/env python3
"""Archive mode against tree mode, and delta deploys: one seeder and N peers on 127.0.0.1.

Each run goes through the execution module as a minion would (Salt's loader, no master): the
seeder's ``lssd.create_torrent`` + ``lssd.seed_start``, then N peers' ``lssd.peer`` at once,
each in its own process, with a certificate-checked (SSL) swarm through our tracker. It times
what a deploy waits for: the seeder's preparation (pack + hash, or hash alone), each peer's
``lssd.peer`` from the seeder's start to its return (download, verification, install), and
what the seeder uploaded. ``--hash-baseline`` is the time to read and SHA-1 every file of the
build once, the floor of any preparation.

``--delta-percent P`` deploys the build as tag A, then a copy with P% of its files rewritten
(same sizes, new bytes) as tag B to the same peers, and reports B's run: what the peers
reused from A and what they downloaded.

``--rate-mbit`` caps every host's upload (libtorrent's upload_rate_limit), standing in for a
host's link; 0 leaves loopback uncapped, where CPU per byte and disk decide.

    .venv/bin/python bench/modes.py --peers 8 --size-mb 512 --modes archive,tree --repeat 3
    .venv/bin/python bench/modes.py --peers 8 --size-mb 512 --compression none --repeat 3
    .venv/bin/python bench/modes.py --peers 8 --size-mb 256 --delta-percent 5 --rate-mbit 50
    .venv/bin/python bench/modes.py --peers 8 --small-files 20000 --modes archive,tree

Results go to stdout (a table) and, with ``--out``, to a JSON file for bench/README.md.

Give it a filesystem like a host's (``--workdir``; each record names it as ``workdir_fs``). An
ext4 without a journal, such as this VM's root, makes every file created after many were
deleted slow (see ``describe_fs``), which inflates both tree-mode downloads and archive-mode
installs. A journaled ext4 in a file does:

    truncate -s 24G /work/lssd-benchfs.img && mkfs.ext4 -q -F /work/lssd-benchfs.img
    mkdir -p /mnt/lssdbench && mount -o loop /work/lssd-benchfs.img /mnt/lssdbench
    .venv/bin/python bench/modes.py --peers 8 --size-mb 512 --workdir /mnt/lssdbench --repeat 3
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "_utils"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "functional"))

from loaderutil import minion_loaders, stop_everything  # noqa: E402  (tests/functional)
from lssd_testutil import free_port  # noqa: E402
from pack_throughput import generate_tree  # noqa: E402  (bench/, beside this file)
from salt_lssd import procs  # noqa: E402


def small_tree(root, count, size_kb, seed=1):
    """``count`` files of ``size_kb`` KiB each (half text-like, half random) in 100 directories."""
    rng = random.Random(seed)
    for i in range(count):
        directory = os.path.join(root, f"d{i % 100:02d}")
        os.makedirs(directory, exist_ok=True)
        size = size_kb * 1024
        data = rng.randbytes(size) if i % 2 else (f"line {i} " * size)[:size].encode()
        with open(os.path.join(directory, f"f{i:06d}.dat"), "wb") as fh:
            fh.write(data)
    return count, count * size_kb * 1024


def change_files(source, target, percent, seed=2):
    """Copy ``source`` to ``target`` and rewrite ``percent``% of its regular files (same size,
    new bytes); returns (files changed, bytes changed)."""
    shutil.copytree(source, target, symlinks=True)
    files = sorted(
        os.path.join(d, name) for d, _, names in os.walk(target) for name in names
        if not os.path.islink(os.path.join(d, name)) and "/.git" not in d
    )
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, round(len(files) * percent / 100)))
    changed = 0
    for path in chosen:
        size = os.path.getsize(path)
        with open(path, "wb") as fh:
            fh.write(rng.randbytes(size))
        changed += size
    return len(chosen), changed


def hash_baseline(root):
    """Seconds to read and SHA-1 every regular file below ``root`` (page cache warm)."""
    started = time.monotonic()
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            digest = hashlib.sha1()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return time.monotonic() - started


def _peer(conn, root, name, port, config, dest):
    """One peer, in a process of its own for the whole run: its loader is made once (making
    one wipes the minion's cachedir, its install records included) and ready before any clock
    starts. For each (tag, torrent, t0) it is sent it deploys and sends back (seconds since
    t0, summary); None ends it."""
    loaders = minion_loaders(root, name, port, **config)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        tag, torrent, t0 = job
        try:
            summary = loaders.modules.lssd.peer(tag, destination_path=dest, torrent=torrent)
            conn.send((time.time() - t0, summary))
        except Exception as exc:  # pylint: disable=broad-except
            conn.send((None, {"error": str(exc)}))


def deploy(work, port, tracker, seeder, tag, workers):
    """One deploy of the seeder's build as ``tag`` to the ``workers``; returns its record."""
    t0 = time.time()
    made = seeder.modules.lssd.create_torrent(tag)
    prepared = time.time() - t0
    tracker.modules.lssd.tracker_allow(made["torrent"])
    seeder.modules.lssd.seed_start(tag, publish=False)
    seeding = time.time() - t0
    for _, conn in workers:
        conn.send((tag, made["torrent"], t0))
    results = [conn.recv() for _, conn in workers]
    failed = [summary["error"] for end, summary in results if end is None]
    if failed:
        raise SystemExit(f"bench/modes.py: {len(failed)} peers failed: {failed[0]}")
    seeder.modules.lssd.seed_stop(tag)
    run_dir = os.path.join(work, "seeder", "cache", "lssd", "run", f"seeder-{tag}")
    uploaded = procs.state(run_dir).get("uploaded", 0)
    peer_states = [procs.state(os.path.join(work, f"peer{i}", "cache", "lssd", "run", f"peer-{tag}"))
                   for i in range(len(workers))]
    ends = sorted(end for end, _ in results)
    summaries = [summary for _, summary in results]
    return {
        "tag": tag, "size": made["size"], "prepare_s": round(prepared, 2), "seeding_s": round(seeding, 2),
        "T_first": round(ends[0], 2), "T_median": round(statistics.median(ends), 2), "T_last": round(ends[-1], 2),
        "install_s_median": statistics.median(s.get("install_seconds") or 0 for s in summaries),
        "download_s_median": statistics.median(s.get("seconds") or 0 for s in summaries),
        "seeder_hash_s": made.get("pack_seconds"), "seeder_torrent_s": made.get("hash_seconds"),
        "from_seeder_sum": sum(s.get("from_seeder") or 0 for s in summaries),
        "downloaded_sum": sum(s.get("downloaded") or 0 for s in summaries),
        "redundant_sum": sum(st.get("redundant") or 0 for st in peer_states),
        "failed_sum": sum(st.get("failed") or 0 for st in peer_states),
        "slices": [st.get("slice") or st.get("slice_error") for st in peer_states],
        "from_seeder": [s.get("from_seeder") for s in summaries],
        "seeder_upload_bytes": uploaded,
        "reused_bytes_median": statistics.median(s.get("reused") or 0 for s in summaries),
        "downloaded_bytes_max": max((s.get("from_seeder") or 0) + (s.get("from_peers") or 0) for s in summaries),
        "mode": summaries[0].get("mode", "archive"),
        "manifest_in_torrent": made.get("manifest_in_torrent"),
        "torrent_bytes": os.path.getsize(made["torrent"]),
    }


def describe_fs(path):
    """The filesystem under ``path``: type, and for ext4 whether it has a journal. Without one
    (this VM's root filesystem) ext4's inode allocator skips every recently deleted inode one
    by one, and a bench that makes and removes trees of thousands of files pays for it in
    every file created (perf: find_inode_bit, recently_deleted)."""
    import subprocess

    try:
        source, fstype = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", path], check=True,
                                        capture_output=True, text=True).stdout.split()[:2]
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {"fstype": None}
    found = {"fstype": fstype, "source": source}
    if fstype == "ext4":
        try:
            with open(f"/sys/fs/ext4/{os.path.basename(source)}/journal_task") as fh:
                found["journal"] = fh.read().strip() != "<none>"
        except OSError:
            found["journal"] = None
    return found


def one_run(args, mode, builds, rate):
    work = tempfile.mkdtemp(prefix="lssd-modes-", dir=args.workdir)
    port = free_port()
    config = {"linger": 60, "timeout": 900}
    if mode != "archive":
        config["mode"] = mode
    elif args.compression:
        config["compression"] = args.compression
    lt_settings = dict(args.libtorrent_settings)
    if rate:
        # Every host's uplink, the seeder's and the peers' alike; libtorrent exempts peers on
        # local networks (all of them here) from its limits unless told otherwise.
        lt_settings.update(upload_rate_limit=rate, ignore_limits_on_local_network=False)
    if lt_settings:
        config["libtorrent_settings"] = lt_settings
    context = multiprocessing.get_context("fork")
    workers = []
    for i in range(args.peers):
        parent, child = context.Pipe()
        proc = context.Process(target=_peer, args=(child, work, f"peer{i}", port, config,
                                                   os.path.join(work, f"dest{i}")))
        proc.start()
        workers.append((proc, parent))
    for _, conn in workers:
        conn.recv()
    tracker = minion_loaders(work, "tracker", port)
    tracker.modules.lssd.tracker_start(port=port, bind="127.0.0.1")
    try:
        records = []
        for tag, build in builds:
            seeder = minion_loaders(work, "seeder", port, seeder_files_path=build, **config)
            records.append(deploy(work, port, tracker, seeder, tag, workers))
        return records
    finally:
        for proc, conn in workers:
            conn.send(None)
            proc.join()
        names = [f"peer{i}" for i in range(args.peers)] + ["seeder"]
        for loaders in [minion_loaders(work, name, port) for name in names] + [tracker]:
            stop_everything(loaders)
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size-mb", type=int, default=256, help="a build-like tree of this size")
    parser.add_argument("--small-files", type=int, default=0, help="instead: this many small files")
    parser.add_argument("--small-kb", type=int, default=4)
    parser.add_argument("--modes", default="archive,tree")
    parser.add_argument("--compression", help="archive mode's compression (default: lssd's, zstd)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--delta-percent", type=float, default=0)
    parser.add_argument("--rate-mbit", type=float, default=0)
    parser.add_argument("--libtorrent-settings", type=json.loads, default={},
                        help='JSON settings for every process, e.g. \'{"file_pool_size": 4000}\'')
    parser.add_argument("--workdir", help="where builds and minions go (default: the temp dir)")
    parser.add_argument("--out", help="write the records here (JSON)")
    args = parser.parse_args()

    builds_dir = tempfile.mkdtemp(prefix="lssd-modes-builds-", dir=args.workdir)
    try:
        first = os.path.join(builds_dir, "A")
        if args.small_files:
            files, size = small_tree(first, args.small_files, args.small_kb)
        else:
            files, size = generate_tree(first, args.size_mb)
        builds = [("A", first)]
        changed = None
        if args.delta_percent:
            changed = change_files(first, os.path.join(builds_dir, "B"), args.delta_percent)
            builds.append(("B", os.path.join(builds_dir, "B")))
        baseline = hash_baseline(first)
        rate = int(args.rate_mbit * 125000)
        fs = describe_fs(builds_dir)
        print(f"build: {files} files, {size / 1e6:.0f} MB; read+SHA-1 of the tree {baseline:.2f} s"
              + (f"; B changes {changed[0]} files, {changed[1] / 1e6:.1f} MB" if changed else "")
              + f"; workdir filesystem {fs}", flush=True)
        records = []
        for run in range(args.repeat):
            for mode in args.modes.split(","):
                for record in one_run(args, mode, builds, rate):
                    record.update(run=run, requested_mode=mode, peers=args.peers, files=files,
                                  rate_mbit=args.rate_mbit, hash_baseline_s=round(baseline, 2),
                                  workdir_fs=fs, date=time.strftime("%Y-%m-%d"))
                    records.append(record)
                    print(json.dumps(record), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"argv": sys.argv[1:], "changed": changed, "records": records}, fh, indent=1)
        return 0
    finally:
        shutil.rmtree(builds_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
