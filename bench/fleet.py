"""Master load at fleet size: what N peers of one deploy cost a Salt master, per peer.

    .venv/bin/python bench/fleet.py --sizes 1000,10000,30000 --profiles mine_get,pillar,trivial,deploy

Two parts, each on a throwaway salt-master on 127.0.0.1 (everything below one temporary
directory, every process stopped when the command ends, also on failure and Ctrl-C):

**Replay** (profiles ``mine_get``, ``pillar``, ``return``, ``event``, ``trivial``). The master
gets N fake accepted minions (``bench/fakefleet.py``: a copy of minion ``seed0``'s public key
and cached grains per id, half with ``role: web``). The harness holds ``seed0``'s key pair, so
it authenticates as any fake id and sends, through Salt's own request channel
(``AsyncReqChannel``, as a minion does), the master-side requests a peer makes in one deploy,
from ``--procs`` client processes. Each fake id authenticates once before anything is measured
(a minion's session key outlives a deploy); the token and AES session are then Salt's own per
request. Per profile and N it replays ``--sample`` peers (``--mine-sample`` for ``mine_get``, which
costs seconds per read at 30,000) in each of ``--rounds`` rounds and reports the master's CPU per
peer (user + sys of every salt-master process, from /proc, less the master's idle rate over
the round) and the wall time; the medians over the rounds go into the table. The profiles:

- ``mine_get``: one read of a 200 KB torrent entry that ``seed0`` published with lssd's
  ``allow_tgt`` ``( G@role:web ) or ( L@seed0 )``, target ``seed0`` (compound), as
  ``salt_lssd.mine.lookup_torrent`` makes it (a peer makes two per deploy);
- ``pillar``: one ``_pillar`` render of the peer's own pillar (``--ext-pillar`` adds
  ``ext_pillar: [{lssd: {}}]`` to the master and the run id as ``pillar_override``);
- ``return``: one ``_return`` of a ``state.apply`` result; ``event``: one ``_minion_event``
  (an ``lssd/peer/<tag>/progress`` event);
- ``trivial``: the master-side requests of a trivial ``state.apply`` (one ``_pillar`` and one
  ``_return``), what any Salt user's peers already cost.

**Deploy** (profile ``deploy``): ``salt-run state.orchestrate lssd.orch.deploy`` of an
``--size-mb`` build from minion ``build`` (tracker and seeder) to ``--peers`` real peers,
``--repeat`` times on the bare master, then as many times after ``--deploy-fakes`` fake
minions are added. Reported: wall time, the master's CPU (salt-master processes, and the
``salt-run`` process in which the orchestrate renders and runs), and the render time (from
starting ``salt-run`` to the start of the orchestrate's first state, from its own
``start_time``s).

``--json FILE`` writes every round; a table is printed at the end. ``bench/README.md``
("Master load at fleet size") has the figures.
"""

import argparse
import asyncio
import base64
import datetime
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENV = os.path.join(REPO, ".venv")


def _reexec_in_venv():
    """Salt and salt_lssd live in the repository's .venv: build it if needed and run there."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(os.path.join(VENV, ".lssd-installed")):
        subprocess.run([os.path.join(REPO, "scripts", "bootstrap")], check=True)
    python = os.path.join(VENV, "bin", "python")
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_in_venv()

sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(REPO, "scripts"))

import cluster  # noqa: E402  bench/cluster.py: daemons, configs, a build
import fakefleet  # noqa: E402  bench/fakefleet.py

CLK = os.sysconf("SC_CLK_TCK")
SEEDER = "seed0"  # the replay master's one real minion identity, whose key every fake copies
TAG = "Fleet1"
ALIAS = f"lssd_torrent_{TAG}"
ALLOW_TGT = f"( G@role:web ) or ( L@{SEEDER} )"
PROFILES = ("mine_get", "pillar", "return", "event", "trivial", "deploy")
REPLAY_PROFILES = PROFILES[:-1]


def log(message):
    print(message, flush=True)


# -- CPU of a process tree ---------------------------------------------------------------------


def session_cpu(sid):
    """CPU seconds (user + sys, own and reaped children's) of every process in session ``sid``:
    a daemon started by ``cluster.start`` leads its own session, and its workers stay in it."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) != sid:  # field 6, session id
            continue
        total += sum(int(v) for v in fields[11:15])  # fields 14-17: utime stime cutime cstime
    return total / CLK


def calibrate():
    """CPU seconds of a fixed pure-Python loop, least of three: on a shared machine a CPU
    second buys less work when the cores are busy (caches, SMT siblings), so records carry it
    and runs at different loads can be compared by it."""
    def once():
        start, total = time.process_time(), 0
        for i in range(3_000_000):
            total += i * i % 7
        return time.process_time() - start
    return min(once() for _ in range(3))


# -- the replaying clients ---------------------------------------------------------------------


def _fake_index(minion_id):
    return int(minion_id[len(fakefleet.PREFIX):])


class _Client:
    """One client process's side: minion opts whose pki_dir holds seed0's key pair, an asyncio
    loop, and the requests of each profile for a given fake id."""

    def __init__(self, minion_conf, ret_port, grains):
        import salt.config

        self.opts = salt.config.minion_config(minion_conf)
        self.opts.update(master_uri=f"tcp://127.0.0.1:{ret_port}", master_ip="127.0.0.1",
                         master_port=ret_port)
        self.grains = grains
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def _channel(self, minion_id):
        import salt.channel.client

        opts = dict(self.opts, id=minion_id)
        # A minion's mine.get, returns and events open a channel per call, as here.
        return salt.channel.client.AsyncReqChannel.factory(opts, io_loop=None)

    async def auth(self, minion_id):
        channel = self._channel(minion_id)
        try:
            await channel.auth.authenticate()
            return channel.auth.authenticated
        finally:
            await channel.close_async()

    async def request(self, profile, minion_id, params):
        channel = self._channel(minion_id)
        try:
            if profile == "mine_get":
                ret = await channel.send({"cmd": "_mine_get", "id": minion_id, "tgt": SEEDER,
                                          "fun": ALIAS, "tgt_type": "compound"}, timeout=600, tries=1)
                return isinstance(ret, dict) and SEEDER in ret
            if profile in ("pillar", "trivial"):
                load = {
                    "cmd": "_pillar", "id": minion_id, "ver": "2",
                    "grains": fakefleet.grains_for(minion_id, _fake_index(minion_id), self.grains),
                    "saltenv": "base", "pillarenv": None, "extra_minion_data": {},
                    "pillar_override": params.get("pillar_override") or {},
                }
                pillar = await channel.crypted_transfer_decode_dictentry(
                    load, dictkey="pillar", timeout=600, tries=1)
                if profile == "pillar":
                    return isinstance(pillar, dict) and "lssd" in pillar
            if profile in ("return", "trivial"):
                ret = await channel.send({
                    "cmd": "_return", "id": minion_id, "jid": params["jid"], "fun": "state.apply",
                    "fun_args": [], "retcode": 0, "success": True, "out": "highstate",
                    "return": {"test_|-nop_|-nop_|-nop": {
                        "name": "nop", "result": True, "comment": "Success!", "changes": {},
                        "__run_num__": 0, "start_time": "12:00:00.000000", "duration": 0.4,
                        "__id__": "nop", "__sls__": "nop"}},
                }, timeout=600, tries=1)
                return ret is not False
            if profile == "event":
                ret = await channel.send({
                    "cmd": "_minion_event", "id": minion_id, "tag": f"lssd/peer/{TAG}/progress",
                    "data": {"tag": TAG, "run_id": params.get("run_id"), "progress": 0.42,
                             "bytes": 3 << 20, "rate": 12.5e6, "peers": 7, "seeds": 1},
                }, timeout=600, tries=1)
                return ret is not False
            raise ValueError(f"unknown profile {profile}")
        finally:
            await channel.close_async()

    def run(self, fn, ids, inflight, *args):
        async def each(sem, minion_id):
            async with sem:
                try:
                    return bool(await fn(*args[:1], minion_id, *args[1:]) if args else await fn(minion_id))
                except Exception as exc:  # pylint: disable=broad-except
                    return f"{minion_id}: {type(exc).__name__}: {exc}"

        async def all_of():
            sem = asyncio.Semaphore(inflight)
            return await asyncio.gather(*(each(sem, i) for i in ids))

        cpu = time.process_time()
        results = self.loop.run_until_complete(all_of())
        ok = sum(1 for r in results if r is True)
        errors = [r for r in results if isinstance(r, str)][:3]
        return {"ok": ok, "n": len(ids), "errors": errors, "client_cpu": time.process_time() - cpu}


def _client_main(conn, minion_conf, ret_port, grains, inflight):
    # Ctrl-C reaches the whole foreground group: the parent stops the clients itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = _Client(minion_conf, ret_port, grains)
    while True:
        command = conn.recv()
        if command[0] == "quit":
            return
        if command[0] == "auth":
            conn.send(client.run(client.auth, command[1], inflight))
        else:
            _, profile, ids, params = command
            conn.send(client.run(client.request, ids, inflight, profile, params))


class Clients:
    """``procs`` client processes; fake id i always goes to the same process, which holds its
    session key from :meth:`auth` on."""

    def __init__(self, procs, minion_conf, ret_port, grains, inflight):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(child, minion_conf, ret_port, grains, inflight),
                               daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def _spread(self, ids):
        return [[i for i in ids if _fake_index(i) % len(self.conns) == k] for k in range(len(self.conns))]

    def _all(self, make):
        parts = self._spread(make.ids)
        for conn, part in zip(self.conns, parts):
            conn.send(make(part))
        results = [conn.recv() for conn in self.conns]
        return {"ok": sum(r["ok"] for r in results), "n": sum(r["n"] for r in results),
                "errors": [e for r in results for e in r["errors"]][:5],
                "client_cpu": sum(r["client_cpu"] for r in results)}

    def auth(self, ids):
        make = lambda part: ("auth", part)  # noqa: E731
        make.ids = ids
        return self._all(make)

    def replay(self, profile, ids, params):
        make = lambda part: ("replay", profile, part, params)  # noqa: E731
        make.ids = ids
        return self._all(make)

    def close(self):
        for conn in self.conns:
            try:
                conn.send(("quit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# -- the replay master -------------------------------------------------------------------------


def _write_pillar(pillar_dir, tracker_port):
    lssd = {"tag": TAG, "seeder_files_path": "/srv/builds/app", "timeout": 600, "linger": 5,
            "tracker": {"host": "127.0.0.1", "port": tracker_port},
            "targets": {"tracker": SEEDER, "seeder": SEEDER, "peer": "G@role:web"}}
    cluster.write_pillar(pillar_dir, lssd, "G@role:web", "/srv/app")


class ReplayMaster:
    def __init__(self, work, ext_pillar, worker_threads):
        self.work = work
        self.root = os.path.join(work, "master")
        self.ports = {name: cluster.free_port() for name in ("publish", "ret")}
        options = dict(id="fleet-master", interface="127.0.0.1", ret_port=self.ports["ret"],
                       publish_port=self.ports["publish"])
        if worker_threads:
            options["worker_threads"] = worker_threads
        if ext_pillar:
            options["ext_pillar"] = [{"lssd": {}}]
        pillar = os.path.join(work, "pillar")
        _write_pillar(pillar, cluster.free_port())
        self.conf = cluster.write_master(self.root, [os.path.join(REPO, "salt")], [pillar], **options)
        self.pki_dir = os.path.join(self.root, "pki")
        self.cachedir = os.path.join(self.root, "cache")
        self.proc = None

    def start(self):
        self.proc = cluster.start(cluster.salt_argv("salt-master", self.conf, "-l", "quiet"),
                                  os.path.join(self.work, "master.out"), cwd=self.work)
        cluster.wait_for(lambda: cluster.port_open(self.ports["ret"]), 90, "the salt-master to listen")
        cluster.wait_for(lambda: os.path.exists(os.path.join(self.pki_dir, "master.pub")), 30, "master.pub")

    def cpu(self):
        return session_cpu(self.proc.pid)

    def settle(self, below=0.1, timeout=90):
        """Wait until the master has finished starting (its workers load their modules for a
        while after the port opens): an idle rate measured during that would be subtracted
        from every round."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.idle_rate(1) >= below:
            pass

    def idle_rate(self, seconds):
        """The master's CPU per second with no requests (its maintenance and publisher loops):
        the least of one-second windows, since a window may catch the end of earlier work."""
        rates = []
        for _ in range(max(1, int(seconds))):
            before, start = self.cpu(), time.monotonic()
            time.sleep(1)
            rates.append((self.cpu() - before) / (time.monotonic() - start))
        return min(rates)

    def opts(self):
        import salt.config

        return salt.config.master_config(os.path.join(self.conf, "master"))


def _seeder_identity(work, master):
    """seed0: a key pair the harness holds, accepted on the master, with cached grains from
    this machine's real grains; and its minion config for the clients. Returns (minion conf
    path, public key, grains)."""
    import salt.config
    import salt.crypt
    import salt.loader
    import salt.payload

    root = os.path.join(work, SEEDER)
    conf_dir = cluster.write_minion(root, SEEDER, "127.0.0.1", master_port=master.ports["ret"],
                                    publish_port=master.ports["publish"])
    pki = os.path.join(root, "pki")
    os.makedirs(pki, exist_ok=True)
    priv, pub = salt.crypt.gen_keys(2048)
    for name, text, mode in (("minion.pem", priv, 0o400), ("minion.pub", pub, 0o644)):
        with open(os.path.join(pki, name), "w") as fh:
            fh.write(text)
        os.chmod(os.path.join(pki, name), mode)
    shutil.copy(os.path.join(master.pki_dir, "master.pub"), os.path.join(pki, "minion_master.pub"))
    os.makedirs(os.path.join(master.pki_dir, "minions"), exist_ok=True)
    with open(os.path.join(master.pki_dir, "minions", SEEDER), "w") as fh:
        fh.write(pub)
    # The fakes' grains are this machine's real ones, as a minion here would report them.
    grains = salt.loader.grains(salt.config.minion_config(os.path.join(conf_dir, "minion")))
    grains = json.loads(json.dumps(grains, default=str))
    os.makedirs(os.path.join(master.cachedir, "grains"), exist_ok=True)
    with open(os.path.join(master.cachedir, "grains", f"{SEEDER}.p"), "wb") as fh:
        salt.payload.dump(dict(grains, id=SEEDER), fh)
    return os.path.join(conf_dir, "minion"), pub, grains


def _publish_torrent_entry(master):
    """seed0's torrent entry as the master stores it after lssd's mine.send: ~200 KB (the
    SCALE.md worst case of a 1 GiB archive), with lssd's allow_tgt."""
    import salt.cache
    import salt.utils.mine

    entry = {"run_id": "fleet-bench", "tag": TAG, "app": None,
             "torrent": base64.b64encode(os.urandom(160 * 1024)).decode("ascii"), "encoding": None,
             "infohash": "0" * 40, "sha256": "0" * 64, "size": 1 << 30, "nonce": "n",
             "seeder": SEEDER, "published": time.time()}
    salt.cache.Cache(master.opts()).store("mine", SEEDER, {
        ALIAS: salt.utils.mine.wrap_acl_structure(entry, allow_tgt=ALLOW_TGT, allow_tgt_type="compound")})


def _params(profile, args, master):
    import salt.utils.jid

    run_id = uuid.uuid4().hex[:12]
    params = {"run_id": run_id, "jid": salt.utils.jid.gen_jid(master.opts())}
    if args.pillar_override is not None:
        params["pillar_override"] = json.loads(args.pillar_override)
    elif args.ext_pillar:
        params["pillar_override"] = {"lssd": {"run_id": run_id}}
    return params


def replay(args, work, records):
    master = ReplayMaster(os.path.join(work, "replay"), args.ext_pillar, args.worker_threads)
    clients = None
    try:
        os.makedirs(master.work, exist_ok=True)
        master.start()
        master.settle()
        minion_conf, pub, grains = _seeder_identity(master.work, master)
        _publish_torrent_entry(master)
        profiles = [p for p in args.profiles if p in REPLAY_PROFILES]
        clients = Clients(args.procs, minion_conf, master.ports["ret"], grains, args.inflight)
        have = 0
        for size in args.sizes:
            started = time.monotonic()
            fakefleet.add(master.pki_dir, master.cachedir, size - have, pub, start=have, grains=grains)
            log(f"\nN = {size}: {size - have} fakes written in {time.monotonic() - started:.1f} s")
            have = size
            # Web fakes only: lssd's allow_tgt lets them read the entry, as the run's peers can.
            sample_n = max(args.sample, args.mine_sample)
            sample = [fakefleet.fake_id(i) for i in range(0, 2 * sample_n, 2)]
            auth = clients.auth(sample)
            if auth["ok"] != len(sample):
                raise RuntimeError(f"{len(sample) - auth['ok']} fake ids failed to authenticate: "
                                   f"{auth['errors']}")
            idle = master.idle_rate(args.idle_seconds)
            scale = calibrate()
            log(f"  {len(sample)} fake ids authenticated; master idle {idle * 1000:.1f} ms CPU/s")
            for profile in profiles:
                n = args.mine_sample if profile == "mine_get" else args.sample
                # A first request loads what a master worker needs for it (loaders, renderers,
                # the fileserver): every worker sees a few before anything is measured.
                clients.replay(profile, sample[:min(len(sample), max(2, 2 * args.procs * args.inflight)
                                                    if profile != "mine_get" else 2)],
                               _params(profile, args, master))
                for rnd in range(args.rounds):
                    # Each round takes the next slice of the sample, wrapping around.
                    ids = [sample[(rnd * n + k) % len(sample)] for k in range(n)]
                    params = _params(profile, args, master)
                    cpu0, t0 = master.cpu(), time.monotonic()
                    result = clients.replay(profile, ids, params)
                    wall = time.monotonic() - t0
                    cpu = master.cpu() - cpu0
                    net = max(0.0, cpu - idle * wall)
                    record = {"part": "replay", "profile": profile, "N": size, "round": rnd, "peers": n,
                              "ok": result["ok"], "errors": result["errors"], "wall_s": wall,
                              "master_cpu_s": cpu, "master_idle_cpu_per_s": idle,
                              "master_cpu_per_peer_ms": net / n * 1000,
                              "client_cpu_s": result["client_cpu"], "ext_pillar": args.ext_pillar,
                              # The machine is shared: how busy it was says how far to trust a row.
                              "loadavg_1m": os.getloadavg()[0], "calibration_cpu_s": scale,
                              "pillar_override": params.get("pillar_override")}
                    records.append(record)
                    log(f"  {profile:<9} round {rnd}: {n} peers, {result['ok']} ok, wall {wall:6.2f} s, "
                        f"master {cpu:7.2f} CPU-s, {record['master_cpu_per_peer_ms']:9.2f} ms/peer"
                        + (f"  errors: {result['errors']}" if result["errors"] else ""))
                    if result["ok"] != n:
                        raise RuntimeError(f"{profile} at N={size}: {n - result['ok']} of {n} requests "
                                           f"failed: {result['errors']}")
    finally:
        if clients:
            clients.close()
        if master.proc:
            cluster.stop([master.proc], timeout=20)


# -- the real deploy ---------------------------------------------------------------------------


def _start_time_of(clock, launched):
    """A state's ``start_time`` (a time of day) as seconds after ``launched`` (a datetime)."""
    parsed = datetime.datetime.strptime(clock, "%H:%M:%S.%f").time()
    return (datetime.datetime.combine(launched.date(), parsed) - launched).total_seconds()


def deploy(args, work, records):
    import demo  # scripts/demo.py: the throwaway cluster of the quick start
    import salt.payload

    d = demo.Demo(os.path.join(work, "deploy"), args.peers, args.size_mb, linger=2)
    os.makedirs(d.work, exist_ok=True)
    try:
        d.write_configs()
        # The master logs warnings only, as the replay master does: info logging is master CPU.
        conf_file = os.path.join(d.master_conf, "master")
        with open(conf_file) as fh:
            conf = json.load(fh)
        conf["log_level_logfile"] = "warning"
        if args.worker_threads:
            conf["worker_threads"] = args.worker_threads
        cluster.write_yaml(conf_file, conf)
        cluster.make_build(d.build, args.size_mb)
        d.start_master()
        d.start_minions()
        master = d.daemons[0]
        pki_dir = os.path.join(d.work, "master", "pki")
        cachedir = os.path.join(d.work, "master", "cache")
        run = 0
        for fakes in (0, args.deploy_fakes):
            if fakes:
                with open(os.path.join(cachedir, "grains", "build.p"), "rb") as fh:
                    grains = salt.payload.load(fh)
                t0 = time.monotonic()
                fakefleet.add(pki_dir, cachedir, fakes, fakefleet.real_pub(pki_dir), grains=grains)
                log(f"\n{fakes} fakes added in {time.monotonic() - t0:.1f} s")
            for rnd in range(args.repeat):
                run += 1
                tag = f"Fleet{run}"
                argv = cluster.salt_argv("salt-run", d.master_conf, "--out=json", "--out-indent=-1",
                                         "state.orchestrate", "lssd.orch.deploy",
                                         f'pillar={{"lssd": {{"tag": "{tag}"}}}}')
                cpu0 = session_cpu(master.pid)
                launched, t0 = datetime.datetime.now(), time.monotonic()
                # stdout holds the JSON; Salt's warnings go to stderr, kept beside it.
                out_path = os.path.join(d.work, f"orchestrate-{tag}.json")
                with open(out_path, "wb") as out, open(out_path + ".err", "wb") as err:
                    proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=d.work)
                    # wait4 gives the salt-run process's own CPU: the orchestrate renders there.
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                wall = time.monotonic() - t0
                with open(out_path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                master_cpu = session_cpu(master.pid) - cpu0
                run_cpu = usage.ru_utime + usage.ru_stime
                try:
                    data = json.loads(text)
                except ValueError:
                    data = demo._last_json(text) or {}
                try:
                    states = demo.orchestrate_states(data)
                except (RuntimeError, ValueError, AttributeError) as exc:
                    log(f"  could not read the orchestrate's states ({exc}); see {out_path}")
                    states = {}
                ok = bool(states) and data.get("retcode") == 0 and all(
                    s.get("result") is True for s in states.values())
                starts = [_start_time_of(s["start_time"], launched)
                          for s in states.values() if s.get("start_time")]
                render = min(starts) if starts else None
                record = {"part": "deploy", "fakes": fakes, "round": rnd, "tag": tag, "ok": ok,
                          "peers": args.peers, "size_mb": args.size_mb, "wall_s": wall,
                          "master_cpu_s": master_cpu, "salt_run_cpu_s": run_cpu,
                          "total_cpu_s": master_cpu + run_cpu, "render_s": render,
                          "loadavg_1m": os.getloadavg()[0], "calibration_cpu_s": calibrate()}
                records.append(record)
                log(f"  deploy {tag} with {fakes} fakes: {'ok' if ok else 'FAILED'}, wall {wall:.1f} s, "
                    f"master {master_cpu:.1f} + salt-run {run_cpu:.1f} CPU-s, render "
                    + (f"{render:.1f} s" if render is not None else "?"))
                if not ok:
                    raise RuntimeError(f"the deploy of {tag} failed: see {out_path}")
    finally:
        try:
            if d.daemons:
                d.stop_roles()
        finally:
            d.stop_daemons()


# -- the report --------------------------------------------------------------------------------


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(records):
    lines = []
    replays = [r for r in records if r["part"] == "replay"]
    if replays:
        sizes = sorted({r["N"] for r in replays})
        profiles = [p for p in REPLAY_PROFILES if any(r["profile"] == p for r in replays)]
        lines.append("master CPU per replayed peer, ms (median of rounds; peers per round; wall s per round)")
        lines.append("| profile | " + " | ".join(f"N = {n:,}" for n in sizes) + " |")
        lines.append("|---|" + "---|" * len(sizes))
        for profile in profiles:
            cells = []
            for n in sizes:
                rs = [r for r in replays if r["profile"] == profile and r["N"] == n]
                if not rs:
                    cells.append("")
                    continue
                cells.append(f"{_median([r['master_cpu_per_peer_ms'] for r in rs]):,.2f} "
                             f"({rs[0]['peers']} x {len(rs)}; {_median([r['wall_s'] for r in rs]):.1f} s)")
            lines.append(f"| {profile} | " + " | ".join(cells) + " |")
    deploys = [r for r in records if r["part"] == "deploy"]
    if deploys:
        lines.append("")
        lines.append("orchestrate deploy (median of runs)")
        lines.append("| fake minions | runs | wall s | master CPU-s | salt-run CPU-s | total CPU-s "
                     "| render s |")
        lines.append("|---|---|---|---|---|---|---|")
        for fakes in sorted({r["fakes"] for r in deploys}):
            rs = [r for r in deploys if r["fakes"] == fakes]
            cols = [_median([r[k] for r in rs]) for k in
                    ("wall_s", "master_cpu_s", "salt_run_cpu_s", "total_cpu_s", "render_s")]
            lines.append(f"| {fakes:,} | {len(rs)} | " + " | ".join(
                f"{c:.1f}" if c is not None else "?" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,30000", help="fake accepted minions, ascending")
    parser.add_argument("--profiles", default="mine_get,pillar,trivial,deploy",
                        help=f"comma-separated, of {','.join(PROFILES)}")
    parser.add_argument("--sample", type=int, default=200, help="peers replayed per round (default 200)")
    parser.add_argument("--mine-sample", type=int, default=10,
                        help="peers per round for mine_get, seconds of CPU each at 30,000 (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per profile and N (default 3)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--inflight", type=int, default=2, help="requests in flight per client (default 2)")
    parser.add_argument("--idle-seconds", type=float, default=5, help="idle measurement per N (default 5)")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="master worker_threads (default: Salt's)")
    parser.add_argument("--ext-pillar", action="store_true",
                        help="master ext_pillar [{lssd: {}}] and the run id as each _pillar's "
                             "pillar_override")
    parser.add_argument("--pillar-override",
                        help="JSON pillar_override of each _pillar (instead of the run id)")
    parser.add_argument("--peers", type=int, default=2, help="deploy: real peers (default 2)")
    parser.add_argument("--size-mb", type=int, default=8, help="deploy: build size (default 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="deploy: runs with and without fakes (default 3)")
    parser.add_argument("--deploy-fakes", type=int, default=10000,
                        help="deploy: fake minions (default 10000)")
    parser.add_argument("--json", help="write every round's record here")
    parser.add_argument("--work", help="directory to work in (default: a new temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.profiles = [p for p in args.profiles.split(",") if p]
    unknown = set(args.profiles) - set(PROFILES)
    if unknown:
        parser.error(f"unknown profiles {sorted(unknown)}")
    if args.sizes != sorted(args.sizes):
        parser.error("--sizes must ascend (fakes are added, never removed, between sizes)")

    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="lssd-fleet-")
    os.makedirs(work, exist_ok=True)
    records = []
    meta = {"date": datetime.date.today().isoformat(), "argv": sys.argv, "cpus": os.cpu_count()}
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: Ctrl-C (or
    # kill -INT) must reach the finally below wherever the bench was started from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 1
    try:
        if any(p in REPLAY_PROFILES for p in args.profiles):
            replay(args, work, records)
        if "deploy" in args.profiles:
            deploy(args, work, records)
        status = 0
    except KeyboardInterrupt:
        status = 130
    except (RuntimeError, TimeoutError) as exc:
        log(f"fleet bench failed: {exc}")
    finally:
        # Whatever a minion started (tracker, seeder, peers) and a daemon left: by the work path.
        cluster.kill_all(lambda: cluster.processes_under(work + os.sep), grace=10)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "records": records}, fh, indent=1)
        if records:
            log("\n" + table(records))
        if args.keep or status:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
