"""The quick-start deploy behind ``scripts/demo``: a throwaway Salt setup on 127.0.0.1.

A salt-master and these minions, each with its own config, root_dir and cachedir below one
temporary directory (so several "hosts" share this machine), all running as the current user:

- ``build``: tracker and seeder (pillar lssd:targets:tracker and :seeder);
- ``web1`` .. ``webN``: the peers (lssd:targets:peer is ``web*``), each with its own
  destination_path.

The master serves the repository (file_roots: its ``salt/`` SLS tree and the repository) and a
generated pillar; the minions load the lssd modules through the installed package's
``salt.loader`` entry point. Then ``salt-run state.orchestrate lssd.orch.deploy`` ships a sample
build and a table says what each peer got, from whom and how fast. Plain subprocesses and config
files (``bench/cluster.py`` writes and starts them, as it does for ``bench/run``), so everything
here can be repeated by hand: the commands are printed as they run.

``--cleanup DIR`` stops whatever still runs from DIR (salt daemons and lssd processes, found
by DIR in their command line) and removes DIR unless it was kept; scripts/demo calls it on exit.
"""

import argparse
import getpass
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import cluster  # bench/cluster.py: the throwaway clusters bench/run starts too

KEEP_MARKER = ".keep"


def log(message):
    print(message, flush=True)


# --------------------------------------------------------------------------- the setup


class Demo:
    def __init__(self, work, peers, size_mb, linger):
        self.work = os.path.abspath(work)
        self.peers = [f"web{i}" for i in range(1, peers + 1)]
        self.minions = ["build"] + self.peers
        self.size_mb = size_mb
        self.linger = linger
        self.build = os.path.join(self.work, "builds", "app")  # the seeder_files_path
        self.master_conf = os.path.join(self.work, "master", "conf")
        self.daemons = []  # Popen of every salt daemon we started
        self.user = getpass.getuser()
        self.group = grp.getgrgid(os.getgid()).gr_name
        self.ports = {name: cluster.free_port() for name in ("publish", "ret", "tracker")}

    def destination(self, peer):
        return os.path.join(self.work, peer, "opt", "app")

    # -- configuration files

    def write_configs(self):
        pillar = os.path.join(self.work, "pillar")
        self.master_conf = cluster.write_master(
            os.path.join(self.work, "master"),
            # The README's classic install: the SLS tree, then the repository for sync_all.
            file_roots=[os.path.join(REPO, "salt"), REPO],
            pillar_roots=[pillar],
            log_level="info",
            id="demo-master",
            interface="127.0.0.1",
            ret_port=self.ports["ret"],
            publish_port=self.ports["publish"],
            file_ignore_regex=[r"^\.venv/", r"^\.git/", r"^bench/results/", r"\.egg-info/"],
            worker_threads=4,
        )
        for minion in self.minions:
            cluster.write_minion(os.path.join(self.work, minion), minion, "127.0.0.1", log_level="info",
                                 master_port=self.ports["ret"], publish_port=self.ports["publish"])
        lssd = {
            "tag": "Demo1",
            "seeder_files_path": self.build,
            "destination_owner": self.user,
            "destination_group": self.group,
            "linger": self.linger,
            "timeout": 600,
            "current": True,
            "tracker": {"host": "127.0.0.1", "bind": "127.0.0.1", "port": self.ports["tracker"]},
            "targets": {"tracker": "build", "seeder": "build", "peer": "web*"},
        }
        cluster.write_pillar(pillar, lssd, "web*", self.destination("{{ grains['id'] }}"))

    # -- daemons

    def start(self, name, argv):
        self.daemons.append(cluster.start(argv, os.path.join(self.work, f"{name}.out"), cwd=self.work))

    def start_master(self):
        self.start("master", cluster.salt_argv("salt-master", self.master_conf, "-l", "quiet"))
        cluster.wait_for(lambda: cluster.port_open(self.ports["ret"]), 60, "the salt-master to listen")

    def start_minions(self):
        for minion in self.minions:
            conf = os.path.join(self.work, minion, "conf")
            self.start(minion, cluster.salt_argv("salt-minion", conf, "-l", "quiet"))

        def ping():
            ret = self.salt(["-L", ",".join(self.minions), "test.ping"], timeout=10, check=False) or {}
            return {minion for minion, up in ret.items() if up is True}

        cluster.wait_minions(ping, self.minions, 180)

    # -- salt commands

    def salt(self, args, timeout=60, check=True):
        return self._run("salt", ["--static", f"--timeout={timeout}"] + args, check)

    def salt_run(self, args, check=True):
        return self._run("salt-run", args, check)

    def _run(self, tool, args, check):
        argv = cluster.salt_argv(tool, self.master_conf, "--out=json", "--out-indent=-1", *args)
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=self.work, check=False)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            data = _last_json(proc.stdout)
        if check and data is None:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return data

    def stop_roles(self):
        """Stop lingering peers, seeding and the tracker through Salt (the clean way)."""
        for function in ("lssd.peer_stop", "lssd.seed_stop", "lssd.tracker_stop"):
            self.salt(["-L", ",".join(self.minions), function], timeout=30, check=False)

    def stop_daemons(self):
        cluster.stop(self.daemons, timeout=20)


# --------------------------------------------------------------------------- helpers


def _last_json(text):
    """salt prints one JSON document per minion with some outputters; take them all."""
    merged = {}
    decoder = json.JSONDecoder()
    index = 0
    text = text.strip()
    while index < len(text):
        try:
            obj, end = decoder.raw_decode(text, index)
        except ValueError:
            return merged or None
        if isinstance(obj, dict):
            merged.update(obj)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return merged or None


def cleanup(work):
    """Stop everything still running from ``work`` and remove it (unless it was kept)."""
    work = os.path.abspath(work)
    if not os.path.isdir(work):
        return
    cluster.kill_all(lambda: cluster.processes_under(work + os.sep), grace=10)
    if os.path.exists(os.path.join(work, KEEP_MARKER)):
        log(f"kept {work} (logs: {work}/*/minion.log, {work}/master/master.log)")
    else:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the report


def orchestrate_states(data):
    data = data.get("data", data)
    (per_master,) = data.values()
    if isinstance(per_master, dict):
        return {key.split("_|-")[1]: value for key, value in per_master.items()}
    raise RuntimeError(f"the orchestrate did not run: {per_master}")


def report(states, demo):
    log("\norchestrate lssd.orch.deploy:")
    for sid, state in sorted(states.items(), key=lambda kv: kv[1].get("__run_num__", 0)):
        mark = {True: "ok", False: "FAILED", None: "--"}[state.get("result")]
        comment = state.get("comment", "").splitlines()[0] if state.get("comment") else ""
        log(f"  {sid:<20} {mark:<7} {state.get('duration', 0) / 1000:6.1f} s  {comment}")

    peers = (states.get("lssd-peers", {}).get("changes") or {}).get("ret") or {}
    rows = []
    for minion in demo.peers:
        results = peers.get(minion)
        if not isinstance(results, dict) or not results:
            rows.append((minion, "no change" if "lssd-peers" in states else "not run", "", "", "", "", "", "", ""))
            continue
        (result,) = results.values()
        deployed = result.get("changes", {}).get("deployed") or {}
        if result.get("result") is not True:
            rows.append((minion, "FAILED", "", "", "", "", "", "", result.get("comment", "")[:100]))
            continue
        size = deployed.get("bytes") or 0
        seconds = deployed.get("seconds") or 0
        rows.append((
            minion,
            "ok",
            f"{size / 1e6:.1f} MB",
            f"{seconds:.2f}",
            f"{size / seconds / 1e6:.0f}" if seconds else "-",
            f"{(deployed.get('from_seeder') or 0) / 1e6:.1f} MB",
            f"{(deployed.get('from_peers') or 0) / 1e6:.1f} MB",
            f"{result.get('duration', 0) / 1000:.2f}",
            "",
        ))
    headers = ("minion", "result", "bytes", "seconds", "MB/s", "from seeder", "from peers", "state s", "")
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    log("\nper peer (seconds: the download; state s: lookup, download, verify, install):")
    log(("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths))).rstrip())
    log(("  " + "  ".join("-" * w for w in widths[:-1])).rstrip())
    for row in rows:
        log(("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths))).rstrip())


# --------------------------------------------------------------------------- main


def run(args):
    started = time.monotonic()
    demo = Demo(args.work, args.peers, args.size_mb, args.linger)
    deployed = False
    try:
        demo.write_configs()
        files = cluster.make_build(demo.build, demo.size_mb)
        log(f"sample build: {files} files, {args.size_mb} MB, in {demo.build}")
        log(f"salt-master on 127.0.0.1:{demo.ports['ret']}, minions: build (tracker + seeder), "
            f"{', '.join(demo.peers)} (peers); all below {demo.work}")
        demo.start_master()
        demo.start_minions()
        log(f"master and {len(demo.minions)} minions up in {time.monotonic() - started:.1f} s")

        log(f"\n$ salt-run -c {demo.master_conf} state.orchestrate lssd.orch.deploy")
        deploy_started = time.monotonic()
        data = demo.salt_run(["state.orchestrate", "lssd.orch.deploy"])
        deploy_seconds = time.monotonic() - deploy_started
        states = orchestrate_states(data)
        report(states, demo)
        deployed = (
            data.get("retcode") == 0
            and "lssd-peers" in states
            and all(s.get("result") is True for s in states.values())
        )

        if deployed:
            for peer in demo.peers:
                app = os.path.join(demo.destination(peer), "current", "bin", "app")
                if not os.access(app, os.X_OK):
                    deployed = False
                    log(f"{peer}: {app} is missing or not executable")
        log(f"\ndeploy: {deploy_seconds:.1f} s (orchestrate); total: {time.monotonic() - started:.1f} s "
            f"(setup, build, deploy)")
        log("result: " + ("every peer holds Demo1 (current -> Demo1)" if deployed else "FAILED"))
    finally:
        if not deployed or args.keep:
            open(os.path.join(demo.work, KEEP_MARKER), "w").close()
        log("stopping lingering peers, the seeder, the tracker and the salt daemons ...")
        try:
            if demo.daemons:
                demo.stop_roles()
        finally:
            demo.stop_daemons()
    return 0 if deployed else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="empty directory to run in (scripts/demo makes one)")
    parser.add_argument("--peers", type=int, default=3, help="number of peer minions (default 3)")
    parser.add_argument("--size-mb", type=int, default=40, help="size of the sample build (default 40)")
    parser.add_argument("--linger", type=int, default=5, help="seconds peers keep seeding (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (logs, trees) afterwards")
    parser.add_argument("--cleanup", metavar="DIR", help="stop what runs from DIR and remove it")
    args = parser.parse_args(argv)
    if args.cleanup:
        cleanup(args.cleanup)
        return 0
    if not args.work:
        parser.error("--work is required (scripts/demo makes one)")
    if args.peers < 1:
        parser.error("--peers must be at least 1")
    # Ctrl-C and SIGTERM unwind through the finally blocks that stop what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError) as exc:
        log(f"demo failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
