#!/usr/bin/env python3
"""Tracker load: announces per second that our tracker and opentracker answer, side by side.

Starts each tracker on 127.0.0.1 (ours as ``python -m salt_lssd tracker`` through procs.spawn,
opentracker from the Debian package), then drives it with the same load: ``--workers``
processes, each keeping ``--concurrency`` connections busy, one announce per connection (as
BitTorrent clients announce), from ``--sources`` loopback addresses 127.0.<w+1>.<k> so the
swarm looks like many hosts. Counts only answers that are valid announce replies (a bencoded
dict with ``peers``). Bounded: stops after ``--requests`` announces or ``--seconds``, whichever
comes first. Loopback only; nothing leaves the machine.

    .venv/bin/python bench/tracker_load.py --trackers lssd,opentracker --requests 100000
"""

import argparse
import errno
import json
import multiprocessing
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_utils"))

from salt_lssd import procs, tracker  # noqa: E402

INFOHASH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")


def request_bytes(n, passkey=None):
    params = [
        ("info_hash", INFOHASH),
        ("peer_id", b"-LD0001-%012d" % n),
        ("port", str(1024 + n % 60000)),
        ("uploaded", "0"),
        ("downloaded", "0"),
        ("left", "0" if n % 10 == 0 else "1000"),
        ("compact", "1"),
        ("numwant", "50"),
    ]
    if passkey:
        params.insert(0, ("passkey", passkey))
    query = urllib.parse.urlencode(params)
    return (f"GET /announce?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: tracker_load\r\n"
            "Connection: close\r\n\r\n").encode()


def _start(conns, ep, port, source, n, passkey):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    err = sock.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return False
    conns[sock.fileno()] = [sock, request_bytes(n, passkey), [], time.monotonic()]
    ep.register(sock.fileno(), select.EPOLLOUT)
    return True


def _step(conns, ep, fd, events, stats):
    """Advance one connection; True when it is finished."""
    sock, out, chunks, started = conns[fd]
    if out:
        try:
            sent = sock.send(out)
        except OSError:
            stats["errors"] += 1
            return True
        conns[fd][1] = out[sent:]
        if not conns[fd][1]:
            ep.modify(fd, select.EPOLLIN)
        return False
    try:
        chunk = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        stats["errors"] += 1
        return True
    if chunk:
        chunks.append(chunk)
        return False
    body = b"".join(chunks).partition(b"\r\n\r\n")[2]
    if body.startswith(b"d") and b"5:peers" in body and b"failure reason" not in body:
        stats["ok"] += 1
        stats["latency"].append(time.monotonic() - started)
    else:
        stats["bad"] += 1
    return True


def worker(index, port, count, deadline, concurrency, sources, passkey, results):
    """One load process: ``count`` announces, ``concurrency`` at a time, until ``deadline``."""
    addresses = [f"127.0.{index + 1}.{k + 1}" for k in range(sources)]
    stats = {"ok": 0, "bad": 0, "errors": 0, "latency": []}
    ep = select.epoll()
    conns = {}
    issued = 0
    while (issued < count or conns) and time.time() < deadline:
        while issued < count and len(conns) < concurrency:
            n = index * 10_000_000 + issued
            if not _start(conns, ep, port, addresses[issued % sources], n, passkey):
                stats["errors"] += 1
            issued += 1
        for fd, events in ep.poll(0.5):
            if _step(conns, ep, fd, events, stats):
                ep.unregister(fd)
                conns.pop(fd)[0].close()
    stats["unfinished"] = len(conns)
    for sock, *_ in conns.values():
        sock.close()
    stats["latency"].sort()
    lat = stats.pop("latency")
    stats["p50_ms"] = round(1000 * lat[len(lat) // 2], 2) if lat else None
    stats["p99_ms"] = round(1000 * lat[len(lat) * 99 // 100], 2) if lat else None
    results.put(stats)


def cpu_seconds(pid):
    """User + system CPU seconds the process ``pid`` has used so far (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port, args, passkey=None, pid=None):
    """Run the load against 127.0.0.1:``port``; with ``pid`` (the tracker's), also its CPU
    time per announce, which the other processes on a shared machine disturb less than the rate."""
    cpu_before = cpu_seconds(pid) if pid else None
    results = multiprocessing.Queue()
    per_worker = args.requests // args.workers
    started = time.time()
    deadline = started + args.seconds
    workers = [
        multiprocessing.Process(target=worker, args=(i, port, per_worker, deadline, args.concurrency,
                                                     args.sources, passkey, results))
        for i in range(args.workers)
    ]
    for proc in workers:
        proc.start()
    stats = [results.get(timeout=args.seconds + 60) for _ in workers]
    elapsed = time.time() - started
    for proc in workers:
        proc.join(10)
    total = {key: sum(s[key] for s in stats) for key in ("ok", "bad", "errors", "unfinished")}
    total["seconds"] = round(elapsed, 2)
    total["announces_per_s"] = round(total["ok"] / elapsed)
    total["p50_ms"] = max(s["p50_ms"] or 0 for s in stats)
    total["p99_ms"] = max(s["p99_ms"] or 0 for s in stats)
    cpu_after = cpu_seconds(pid) if pid else None
    if pid and cpu_after is None:
        total["tracker_died"] = True  # a dead tracker invalidates the run; its log says why
    elif pid and total["ok"]:
        total["tracker_cpu_us_per_announce"] = round(1e6 * (cpu_after - cpu_before) / total["ok"], 1)
    return total


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_lssd(args, work):
    state_dir = os.path.join(work, "lssd")
    run_dir = os.path.join(state_dir, "run", "tracker")
    passkey = tracker.new_passkey() if args.passkey else None
    tracker.allow(state_dir, INFOHASH.hex(), "Load1", passkey=passkey)
    port = free_port()
    state = procs.spawn("tracker", run_dir, {"bind": "127.0.0.1", "port": port, "state_dir": state_dir})
    try:
        result = drive(port, args, passkey, pid=state["pid"])
    finally:
        procs.stop(run_dir)
    if result.get("tracker_died"):
        with open(os.path.join(run_dir, "log"), errors="replace") as fh:
            result["tracker_log"] = fh.read()[-2000:]
        result["tracker_state"] = procs.state(run_dir)
    return result


def run_opentracker(args, work):
    binary = shutil.which("opentracker")
    if binary is None:
        raise SystemExit("opentracker is not installed: apt-get install -y opentracker")
    port = free_port()
    root = os.path.join(work, "opentracker")
    os.makedirs(root)
    # Debian's opentracker serves whitelisted info-hashes only (as ours serves registered ones);
    # the list's path is inside its chroot (-d).
    with open(os.path.join(root, "whitelist"), "w") as fh:
        fh.write(INFOHASH.hex() + "\n")
    proc = subprocess.Popen([binary, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-d", root,
                             "-w", "/whitelist"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        return drive(port, args, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trackers", default="lssd,opentracker",
                        help="lssd, opentracker, or the port of a tracker on 127.0.0.1")
    parser.add_argument("--requests", type=int, default=100_000, help="announces per tracker")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per tracker")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--concurrency", type=int, default=64, help="connections per process")
    parser.add_argument("--sources", type=int, default=32, help="source addresses per process")
    parser.add_argument("--passkey", action="store_true", help="register ours with a passkey")
    parser.add_argument("--pid", type=int, help="the process id of the tracker given by port")
    args = parser.parse_args()
    runners = {"lssd": run_lssd, "opentracker": run_opentracker}
    work = tempfile.mkdtemp(prefix="tracker-load-")
    try:
        for name in args.trackers.split(","):
            if name.isdigit():  # a tracker already listening on 127.0.0.1:<port>, INFOHASH allowed
                result = drive(int(name), args, pid=args.pid)
            else:
                result = runners[name](args, work)
            print(json.dumps(dict(result, tracker=name), sort_keys=True), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
