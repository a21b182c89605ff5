"""The four ways of moving one payload from host 0 to N peers, on the same lab.

Each scenario returns a :class:`Outcome`: the start time (wall clock, T0) and, per peer, the
wall-clock time it had the whole payload (None if it never did). The runner turns that into
T_first/T_median/T_last and reads the seeder's link counters and the CPU samples over the
same interval.

- ``swarm``: the data plane alone: ``python -m salt_lssd tracker|seeder|peer RUN_DIR`` in the
  hosts' namespaces with config.json as ``procs.spawn`` writes it. Tracker and seeder run
  first; T0 is when the bench starts the peer processes, so a peer's time includes starting
  Python and libtorrent, meeting the tracker and connecting. Done = ``finished`` in the peer's
  state.json (libtorrent's torrent_finished_alert: every piece hash-checked).
- ``http``: ``python -m http.server`` on host 0, one ``curl`` per peer, all at once.
- ``saltfs``: a salt-master on host 0 and a salt-minion per peer; ``cp.get_file
  salt://bench/payload`` on every peer in one job; done = that minion's return reached the master.
- ``lssd``: the same Salt cluster plus a minion on host 0 (tracker and seeder),
  ``salt-run state.orchestrate lssd.orch.deploy``; T_last is when the orchestration returned
  (the deploy as its user sees it: download, verify, install, stop), per-peer times are from the
  peers' state.json ``finished``.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import cluster

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(REPO, "_utils"))

from salt_lssd import common  # noqa: E402

TRACKER_PORT = 8998
TORRENT_PORT = 6881
HTTP_PORT = 8000
SALT_RET_PORT = 4506  # Salt's default: the lab's master has host 0 to itself


class ScenarioError(Exception):
    pass


class Outcome:
    def __init__(self, t0, done, extra=None, t_end=None):
        self.t0 = t0
        self.done = done  # {peer index: wall time it had the payload, or None}
        self.extra = extra or {}
        self.t_end = t_end  # the run's end if not the last peer's (lssd: orchestration returned)


class Context:
    """What every scenario shares: the lab, the payload, the options, a work directory."""

    def __init__(self, lab, workdir, payload, size_bytes, args, log):
        self.lab = lab
        self.workdir = workdir
        self.payload = payload
        self.size = size_bytes
        self.args = args
        self.log = log
        self.python = sys.executable
        self.salt = None  # the Salt cluster, started on first use
        self.up_at_start = None
        self.cpu_at_start = None
        self.cpu_at_end = None

    def start(self):
        """T0 of a scenario: also where host 0's upload counter and the lab's CPU are read."""
        self.up_at_start = self.lab.upload_bytes(0)
        self.cpu_at_start = self.lab.cpu_seconds()
        self.cpu_at_end = None
        return time.time()

    def finish(self):
        """The end of what a scenario measures (before it stops its processes)."""
        self.cpu_at_end = (time.time(), self.lab.cpu_seconds())

    def dir(self, *parts):
        path = os.path.join(self.workdir, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.join(REPO, "_utils"), env.get("PYTHONPATH")) if p
        )
        env.pop("http_proxy", None)
        env.pop("HTTP_PROXY", None)
        return env

    def timeout(self, swarm=False):
        """Give-up time for one scenario: 3x the time one central server would need + 2 min, or
        for a swarm (lssd, swarm) 10x the time one copy takes over one link + 2 min + 2 s per
        peer (Salt starts a job per peer, about a CPU-second each on the lab's shared cores), so
        a stuck swarm does not hold a grid for half an hour."""
        lab = self.lab
        one = self.size * 8 / (min(lab.seeder_rate_mbit, lab.rate_mbit) * 1e6)
        if swarm:
            return 10 * one + 120 + 2 * lab.peers
        return 3 * lab.peers * one + 120


def proc_cpu(pid):
    """(user, system) CPU seconds of a live process so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return [round(int(fields[11]) / tick, 2), round(int(fields[12]) / tick, 2)]
    except (OSError, IndexError, ValueError):
        return [0.0, 0.0]


def read_state(run_dir):
    """What the role in ``run_dir`` last reported (its state.json), {} before its first report."""
    return common.read_json(os.path.join(run_dir, "state.json"), default={}) or {}


def write_config(run_dir, config):
    """``run_dir`` as ``procs.spawn`` prepares it, for a role the lab starts in a namespace
    itself: config.json written, and no pidfile or state.json of an earlier run."""
    common.ensure_dir(run_dir)
    for stale in ("pid", "state.json"):
        if os.path.exists(os.path.join(run_dir, stale)):
            os.unlink(os.path.join(run_dir, stale))
    common.write_json_atomic(os.path.join(run_dir, "config.json"), config)


def wait_state(run_dir, proc, ok, timeout=60, what="process"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run_dir)
        if state.get("status") == "failed":
            raise ScenarioError(f"{what} failed: {state.get('error')} (log: {run_dir}/log)")
        if state.get("status") in ok:
            return state
        if proc.poll() is not None:
            raise ScenarioError(f"{what} exited ({proc.returncode}) before it was ready; log: {run_dir}/log")
        time.sleep(0.05)
    raise ScenarioError(f"{what} not ready after {timeout}s; log: {run_dir}/log")


# -- swarm -------------------------------------------------------------------------------------


def make_torrent(ctx, where):
    from salt_lssd import torrent

    if ctx.args.piece_kb:
        torrent.MIN_PIECE_SIZE = int(ctx.args.piece_kb) * 1024
    made = torrent.make_torrent(
        ctx.payload,
        os.path.join(where, "payload.torrent"),
        f"http://{ctx.lab.addr(0)}:{TRACKER_PORT}/announce",
        lssd={"tag": "bench"},
    )
    return made


def lssd_command(ctx, role, run_dir):
    return [ctx.python, "-m", "salt_lssd", role, run_dir]


def swarm(ctx):
    from salt_lssd import tracker

    lab = ctx.lab
    work = ctx.dir("swarm")
    made = make_torrent(ctx, work)
    state_dir = ctx.dir("swarm", "tracker-state")
    tracker.allow(state_dir, made["infohash"], "bench")
    started = []
    try:
        _start_role(ctx, started, "tracker", os.path.join(work, "tracker"), ("running",),
                    {"state_dir": state_dir, "bind": lab.addr(0), "port": TRACKER_PORT})
        seeder_dir = os.path.join(work, "seeder")
        seeder = _start_role(ctx, started, "seeder", seeder_dir, ("seeding",), {
            "torrent": made["torrent"],
            "save_path": os.path.dirname(ctx.payload),
            "tag": "bench",
            "infohash": made["infohash"],
            "listen": f"{lab.addr(0)}:{TORRENT_PORT}",
            "settings": ctx.args.settings or None,
        })
        peer_dirs = {index: os.path.join(work, f"peer{index}") for index in range(1, lab.peers + 1)}
        for run_dir in peer_dirs.values():
            write_config(run_dir, _peer_config(ctx, made, run_dir))
        t0 = ctx.start()
        peers = {}
        for index, run_dir in peer_dirs.items():
            peers[index] = lab.popen(index, lssd_command(ctx, "peer", run_dir), os.path.join(run_dir, "log"),
                                     ctx.env())
        started.extend(peers.values())
        done, failed, trace = _wait_peers(ctx, t0, peers, peer_dirs)
        ctx.finish()
        t_end = max([v for v in done.values() if v] or [time.time()])
        extra = _swarm_extra(ctx, made, t0, (seeder, seeder_dir), peers, peer_dirs)
        if trace:
            extra["trace"] = trace
        if failed:
            extra["failed"] = {str(k): v for k, v in failed.items()}
        return Outcome(t0, done, extra, t_end=t_end)
    finally:
        cluster.stop(started[::-1])
        if not ctx.args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _start_role(ctx, started, role, run_dir, ready, config):
    """Start ``role`` on host 0 with ``config`` and wait until its status is one of ``ready``."""
    write_config(run_dir, config)
    proc = ctx.lab.popen(0, lssd_command(ctx, role, run_dir), os.path.join(run_dir, "log"), ctx.env())
    started.append(proc)
    wait_state(run_dir, proc, ready, what=role)
    return proc


def _peer_config(ctx, made, run_dir):
    return {
        "torrent": made["torrent"],
        "save_path": os.path.join(run_dir, "data"),
        "tag": "bench",
        "infohash": made["infohash"],
        "linger": 3600,  # stopped by the bench once everyone is done
        "timeout": ctx.timeout(swarm=True),
        "listen": f"0.0.0.0:{TORRENT_PORT}",
        "settings": dict(ctx.args.settings or {}, **(ctx.args.peer_settings or {})) or None,
        **(ctx.args.peer_config or {}),
    }


def _wait_peers(ctx, t0, peers, peer_dirs):
    """Until every peer has finished or failed, or the give-up time: ``({index: the time it
    finished, or None}, {index: why it failed}, trace points if --trace)``."""
    done = {index: None for index in peers}
    failed = {}
    trace, next_trace = [], 0.0
    deadline = time.monotonic() + ctx.timeout(swarm=True)
    while time.monotonic() < deadline:
        if ctx.args.trace and time.monotonic() >= next_trace:
            next_trace = time.monotonic() + 0.5
            trace.append(_trace_point(ctx, t0, peer_dirs))
        for index, run_dir in peer_dirs.items():
            if done[index] is not None or index in failed:
                continue
            state = read_state(run_dir)
            if state.get("finished"):
                done[index] = state["finished"]
            elif state.get("status") == "failed" or peers[index].poll() is not None:
                failed[index] = state.get("error") or f"exited {peers[index].returncode}"
        if len(failed) + sum(v is not None for v in done.values()) == len(done):
            break
        # A peer's state.json carries the time it finished: polling slowly costs no
        # accuracy, and keeps the bench's own CPU use out of the way at large N.
        time.sleep(0.4)
    return done, failed, trace


def _trace_point(ctx, t0, peer_dirs):
    states = [read_state(d) for d in peer_dirs.values()]
    return {
        "t": round(time.time() - t0, 2),
        "seeder_sent": ctx.lab.upload_bytes(0) - ctx.up_at_start,
        "progress": [s.get("progress", 0) for s in states],
        "from_seeder": [s.get("from_seeder", 0) for s in states],
        "peers": [s.get("peers", 0) for s in states],
        "seeder_connections": [s.get("seeder_connections") for s in states],
    }


def _swarm_extra(ctx, made, t0, seeder, peers, peer_dirs):
    """What the swarm's own reports add to the record: payload counts, CPU per process."""
    seeder_proc, seeder_dir = seeder
    peer_cpu = [proc_cpu(p.pid) for p in peers.values()]
    seeder_cpu = proc_cpu(seeder_proc.pid)
    # Lingering peers and the seeder rewrite state.json every second: wait for one more
    # round so the byte counters include the last second.
    time.sleep(1.2)
    seeder_state = read_state(seeder_dir)
    states = [read_state(d) for d in peer_dirs.values()]
    return {
        "seeder_payload_ratio": round(seeder_state.get("uploaded", 0) / ctx.size, 3),
        "piece_kb": made["piece_size"] // 1024,
        "from_seeder_ratio": round(sum(s.get("from_seeder", 0) for s in states) / ctx.size, 3),
        "peer_start_spread": round(max((s.get("started", t0) for s in states), default=t0) - t0, 2),
        # CPU seconds (user, system) of the seeder process and of the average peer process.
        "cpu_seeder_s": seeder_cpu,
        "cpu_peer_s": [round(sum(c[i] for c in peer_cpu) / len(peer_cpu), 2) for i in (0, 1)],
    }


# -- http --------------------------------------------------------------------------------------


def http(ctx):
    lab = ctx.lab
    work = ctx.dir("http")
    url = f"http://{lab.addr(0)}:{HTTP_PORT}/{os.path.basename(ctx.payload)}"
    server = lab.popen(0, [ctx.python, "-m", "http.server", HTTP_PORT, "--bind", lab.addr(0),
                           "--directory", os.path.dirname(ctx.payload)],
                       os.path.join(work, "server.log"))
    clients = []
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(lab.exec_argv(1, ["curl", "-sfI", "-o", "/dev/null", url]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise ScenarioError(f"http.server on host 0 did not answer; log: {work}/server.log")
            time.sleep(0.1)
        done = {}
        lock = threading.Lock()
        dests = {i: os.path.join(ctx.dir("http", f"peer{i}"), "payload") for i in range(1, lab.peers + 1)}

        def waiter(index, proc):
            proc.wait()
            with lock:
                done[index] = time.time() if proc.returncode == 0 else None

        t0 = ctx.start()
        threads = []
        for index, dest in dests.items():
            proc = lab.popen(index, ["curl", "-sS", "--fail", "--max-time", int(ctx.timeout()), "-o", dest, url],
                             os.path.join(os.path.dirname(dest), "curl.log"))
            clients.append(proc)
            thread = threading.Thread(target=waiter, args=(index, proc), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(ctx.timeout())
        ctx.finish()
        for index, dest in dests.items():
            if done.get(index) and os.path.getsize(dest) != ctx.size:
                done[index] = None
        return Outcome(t0, {i: done.get(i) for i in dests})
    finally:
        cluster.stop(clients + [server])
        if not ctx.args.keep:
            shutil.rmtree(work, ignore_errors=True)


# -- Salt --------------------------------------------------------------------------------------


class SaltCluster:
    """A salt-master on host 0 and a salt-minion per peer (``peer<i>``), plus ``seed0`` on host 0
    when the lssd scenario runs. Started once per lab, used by saltfs and lssd."""

    def __init__(self, ctx, seeder_minion):
        self.ctx = ctx
        self.lab = ctx.lab
        self.root = ctx.dir("salt")
        self.srv = ctx.dir("salt", "srv")
        self.pillar = ctx.dir("salt", "pillar")
        self.master_conf = None  # the master's config directory, once written
        self.minions = {f"peer{i}": i for i in range(1, self.lab.peers + 1)}
        if seeder_minion:
            self.minions["seed0"] = 0
        self.procs = []

    def minion_root(self, mid):
        return os.path.join(self.root, mid)

    def start(self):
        lab = self.lab
        os.makedirs(os.path.join(self.srv, "bench"), exist_ok=True)
        link = os.path.join(self.srv, "bench", "payload")
        if not os.path.exists(link):
            os.link(self.ctx.payload, link)
        master_root = os.path.join(self.root, "master")
        self.master_conf = cluster.write_master(
            master_root, [self.srv, os.path.join(REPO, "salt")], [self.pillar],
            interface=lab.addr(0),
            # All hosts share 2 cores: while a large swarm saturates them the master answers
            # late, and Salt's default 5 s publish timeout then reports minions missing.
            timeout=60,
            gather_job_timeout=60,
        )
        self.procs.append(lab.popen(0, cluster.salt_argv("salt-master", self.master_conf, "-l", "warning"),
                                    os.path.join(master_root, "stdout")))
        try:
            cluster.wait_for(lambda: lab.connect(0, 0, SALT_RET_PORT) == "open", 60,
                             "the salt-master to listen")
        except TimeoutError as exc:
            raise ScenarioError(f"{exc}; log: {master_root}/master.log") from None
        for mid, index in self.minions.items():
            root = self.minion_root(mid)
            conf = cluster.write_minion(root, mid, lab.addr(0), grains_cache=True)
            self.procs.append(lab.popen(index, cluster.salt_argv("salt-minion", conf, "-l", "warning"),
                                        os.path.join(root, "stdout"), self.ctx.env()))
        self.wait_minions()

    def wait_minions(self, timeout=None):
        timeout = timeout or 60 + 5 * len(self.minions)
        try:
            cluster.wait_minions(self.ping, self.minions, timeout)
        except TimeoutError as exc:
            raise ScenarioError(f"{exc}; logs under {self.root}") from None

    def ping(self):
        return {line["minion"] for line in self.job("*", "test.ping", [], timeout=10)}

    def job(self, tgt, fun, args, timeout=30, on_line=None):
        """Run ``fun`` on ``tgt`` through the master; return one dict per minion return, each with
        the wall time it reached the master."""
        cmd = self.lab.exec_argv(0, [self.ctx.python, os.path.join(BENCH, "_saltjob.py"), self.master_conf,
                                     tgt, fun, json.dumps(args), timeout])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=self.ctx.env())
        self.lab.processes.append(proc)
        lines = []
        for raw in proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            line["t_seen"] = time.time()
            lines.append(line)
            if on_line:
                on_line(line)
        proc.wait()
        if proc.returncode != 0:
            raise ScenarioError(f"salt job {fun} failed: {proc.stderr.read()[-2000:]}")
        return lines

    def run(self, fun, args, timeout):
        cmd = self.lab.exec_argv(0, cluster.salt_argv("salt-run", self.master_conf, "--out=json",
                                                      "--timeout", int(timeout), fun, *args))
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout + 60, env=self.ctx.env())

    def stop(self):
        cluster.stop(self.procs[::-1], timeout=15)
        self.procs = []


def salt_cluster(ctx):
    if ctx.salt is None:
        wants_lssd = "lssd" in ctx.args.scenarios
        salt = SaltCluster(ctx, seeder_minion=wants_lssd)
        ctx.salt = salt
        ctx.log(f"starting salt-master and {len(salt.minions)} minions")
        salt.start()
    return ctx.salt


def saltfs(ctx):
    salt = salt_cluster(ctx)
    dests = {}
    for mid, index in salt.minions.items():
        if index:
            dests[mid] = os.path.join(ctx.dir("saltfs", mid), "payload")
    done = {}
    t0 = ctx.start()
    # One job to every peer minion at once; cp.get_file renders dest with Jinja, so each minion
    # writes into its own directory.
    dest = os.path.join(ctx.workdir, "saltfs", "{{ grains['id'] }}", "payload")
    lines = salt.job("peer*", "cp.get_file", {"arg": ["salt://bench/payload", dest],
                                                  "kwarg": {"template": "jinja"}},
                        timeout=ctx.timeout())
    ctx.finish()
    for line in lines:
        index = salt.minions.get(line["minion"])
        path = dests.get(line["minion"])
        ok = line.get("ret") and path and os.path.exists(path) and os.path.getsize(path) == ctx.size
        done[index] = line["t"] if ok else None
    shutil.rmtree(os.path.join(ctx.workdir, "saltfs"), ignore_errors=True)
    return Outcome(t0, {i: done.get(i) for i in range(1, ctx.lab.peers + 1)})


LSSD_TAG_COUNTER = [0]


def lssd(ctx):
    orch = os.path.join(REPO, "salt", "lssd", "orch", "deploy.sls")
    if not os.path.exists(orch):
        raise ScenarioError(
            f"{orch} does not exist yet: the lssd scenario needs the state tree salt/lssd/ "
            "(lssd.orch.deploy); run the other scenarios meanwhile"
        )
    salt = salt_cluster(ctx)
    LSSD_TAG_COUNTER[0] += 1
    tag = f"Bench{os.getpid()}x{LSSD_TAG_COUNTER[0]}"
    build = ctx.dir("lssd", "build")
    link = os.path.join(build, "payload")
    if not os.path.exists(link):
        os.link(ctx.payload, link)
    dest_root = ctx.dir("lssd", "dest")
    lssd_pillar = {
        "tag": tag,
        "seeder_files_path": build,
        "compression": "none",
        "linger": 30,
        "timeout": int(ctx.timeout(swarm=True)),
        "tracker": {"host": ctx.lab.addr(0), "port": TRACKER_PORT},
        "targets": {"tracker": "seed0", "seeder": "seed0", "peer": "peer*"},
    }
    if ctx.args.settings:
        lssd_pillar["libtorrent_settings"] = ctx.args.settings
    lssd_pillar.update(getattr(ctx.args, "pillar", None) or {})
    cluster.write_pillar(salt.pillar, lssd_pillar, "peer*", dest_root + "/{{ grains['id'] }}")
    salt.job("*", "saltutil.refresh_pillar", [], timeout=60)
    salt.job("*", "saltutil.sync_all", [], timeout=120)
    t0 = ctx.start()
    result = salt.run("state.orchestrate", ["lssd.orch.deploy"], timeout=ctx.timeout(swarm=True))
    t_end = time.time()
    ctx.finish()
    out_path = os.path.join(ctx.workdir, "lssd-orchestrate.json")
    with open(out_path, "w") as fh:
        fh.write(result.stdout + "\n--- stderr ---\n" + result.stderr)
    done, downloads = {}, []
    for mid, index in salt.minions.items():
        if not index:
            continue
        state_file = os.path.join(salt.minion_root(mid), "cache", "lssd")
        state = _find_state(state_file, tag)
        finished = state.get("finished")
        if state.get("started"):
            downloads.append((state["started"], finished))
        target = os.path.join(dest_root, mid, tag, "payload")
        ok = os.path.exists(target) and os.path.getsize(target) == ctx.size
        done[index] = (finished or t_end) if ok else None
    extra = {"orchestrate_rc": result.returncode, "orchestrate_log": out_path,
             "timeline": _timeline(result.stdout, t0, t_end, downloads)}
    if result.returncode != 0:
        extra["error"] = (result.stderr or result.stdout)[-1000:]
    if not ctx.args.keep:
        # N installed copies and N archives: free the memory before the next scenario (lingering
        # peers keep their open archive until they exit).
        shutil.rmtree(dest_root, ignore_errors=True)
        for mid in salt.minions:
            shutil.rmtree(os.path.join(salt.minion_root(mid), "cache", "lssd", "archives"), ignore_errors=True)
    return Outcome(t0, done, extra, t_end=t_end)


def _find_state(state_root, tag):
    """The last report of the peer process of ``tag`` below ``state_root`` ({} if none)."""
    for dirpath, _, files in os.walk(state_root):
        if "state.json" in files and tag in dirpath and os.path.basename(dirpath).startswith("peer-"):
            return read_state(dirpath)
    return {}


def _timeline(stdout, t0, t_end, downloads):
    """Where an orchestrate's time went, in seconds from T0: each step's start and end (from
    the orchestrate's own start_time and duration), the peers' download processes' first and
    last start and finish, and the end. The control plane's share is what lies outside the
    downloads."""
    out = {"end": round(t_end - t0, 2)}
    try:
        # salt-run --out=json: {"data": {"<master id>": {state key: result}}, ...}
        (steps,) = json.loads(stdout)["data"].values()
    except (ValueError, KeyError, TypeError, AttributeError):
        return out
    day = datetime.date.fromtimestamp(t0)
    for key, step in (steps or {}).items():
        if not isinstance(step, dict) or "start_time" not in step:
            continue
        start = datetime.datetime.combine(day, datetime.time.fromisoformat(step["start_time"])).timestamp()
        name = step.get("__id__") or key.split("_|-")[1]
        out[name] = [round(start - t0, 2), round(start + (step.get("duration") or 0) / 1000 - t0, 2)]
    if downloads:
        starts = sorted(s for s, _ in downloads)
        ends = sorted(f for _, f in downloads if f)
        out["downloads_start"] = [round(starts[0] - t0, 2), round(starts[-1] - t0, 2)]
        if ends:
            out["downloads_end"] = [round(ends[0] - t0, 2), round(ends[-1] - t0, 2)]
    return out


SCENARIOS = {"swarm": swarm, "http": http, "saltfs": saltfs, "lssd": lssd}
