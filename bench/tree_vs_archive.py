#!/usr/bin/env python3
"""Tree mode against archive mode, and a delta deploy, through the real lssd modules.

One tracker+seeder minion and one peer minion on 127.0.0.1, driven through Salt's loader with
no daemons (as tests/functional does), no link caps: what it measures is the seeder's
preparation (pack or hash) and the peer's download + install on this machine's disk and
CPU. For each build: archive mode (zstd) and tree mode deploy tag R1, then tag R2 (the build
with ``--changed`` of its files rewritten) is deployed over R1 in tree mode (a delta deploy)
and in archive mode.

    .venv/bin/python bench/tree_vs_archive.py --files 20000 --file-kb 2      # many small files
    .venv/bin/python bench/tree_vs_archive.py --files 100 --file-kb 2048 --changed 2  # large files
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "functional")]

from loaderutil import free_port, minion_loaders, stop_everything  # noqa: E402


def make_build(root, files, file_kb, seed):
    rng = random.Random(seed)
    for i in range(files):
        d = os.path.join(root, "src", f"package_{i // 200:03d}", f"sub_{(i // 20) % 10}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(file_kb * 512, file_kb * 1536)
        with open(os.path.join(d, f"module_{i:05d}.py"), "wb") as fh:
            fh.write(rng.randbytes(size))


def change(root, files, count, seed):
    rng = random.Random(seed)
    paths = []
    for dirpath, _, names in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in names]
    for path in rng.sample(sorted(paths), min(count, len(paths))):
        with open(path, "r+b") as fh:
            fh.write(rng.randbytes(64))


def deploy(origin, peer, tag, build, mode, dest):
    started = time.monotonic()
    made = origin.modules.lssd.create_torrent(tag, files_path=build, mode=mode)
    prepared = time.monotonic()
    origin.modules.lssd.tracker_allow(made["torrent"])
    origin.modules.lssd.seed_start(tag)
    seeded = time.monotonic()
    summary = peer.modules.lssd.peer(tag, destination_path=dest, torrent=made["torrent"], linger=0,
                                     unsafe_please_delete=True)
    done = time.monotonic()
    origin.modules.lssd.seed_stop(tag)
    return {
        "tag": tag, "mode": mode, "files": made["files"], "payload": made["size"],
        "torrent_bytes": os.path.getsize(made["torrent"]),
        "prepare_s": round(prepared - started, 2), "peer_s": round(done - seeded, 2),
        "download_s": summary["seconds"], "install_s": summary["install_seconds"],
        "downloaded": summary["downloaded"], "reused": summary["reused"],
        "total_s": round(done - started, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--file-kb", type=int, default=2, help="mean file size in KiB (0.5x-1.5x)")
    parser.add_argument("--changed", type=int, default=0, help="files rewritten in R2 (default: 1%%)")
    parser.add_argument("--json", help="append the records to this file")
    args = parser.parse_args()
    changed = args.changed or max(1, args.files // 100)
    work = tempfile.mkdtemp(prefix="lssd-tree-bench-")
    port = free_port()
    minions = []
    try:
        build1, build2 = os.path.join(work, "build1"), os.path.join(work, "build2")
        make_build(build1, args.files, args.file_kb, 1)
        shutil.copytree(build1, build2)
        change(build2, args.files, changed, 2)
        origin = minion_loaders(work, "origin", port, ssl=False)
        peers = {m: minion_loaders(work, f"peer-{m}", port, ssl=False) for m in ("archive", "tree")}
        minions = [origin] + list(peers.values())
        origin.modules.lssd.tracker_start(port=port, bind="127.0.0.1")
        records = []
        for mode, peer in peers.items():
            dest = os.path.join(work, f"dest-{mode}")
            for tag, build in (("R1", build1), ("R2", build2)):
                record = deploy(origin, peer, f"{tag}-{mode}", build, mode, dest)
                record.update(build_files=args.files, file_kb=args.file_kb, changed=changed if tag == "R2" else 0)
                records.append(record)
                print(json.dumps(record), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                for record in records:
                    fh.write(json.dumps(record) + "\n")
    finally:
        for minion in minions:
            stop_everything(minion)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
