"""Throwaway Salt clusters on one machine and the processes behind them, for the bench and the demo.

``bench/run`` (a master and minions in network namespaces) and ``scripts/demo`` (the same on
127.0.0.1) start, stop and wait for daemons, write a master's and its minions' configs, the
lssd pillar and a sample build the same way: this module is that one way. It needs only the
standard library and never imports ``salt_lssd``, so the demo can use it before anything is
deployed. Where a caller runs its processes somewhere else (a network namespace), it passes the
argv prefix, the log file and the environment; what is started, how it is stopped and what
counts as up is decided here.
"""

import contextlib
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time

# The Salt CLIs and daemons of the environment this Python runs in (the repository's .venv).
BIN = os.path.dirname(sys.executable)


# -- processes ---------------------------------------------------------------------------------


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (for a tracker or a salt daemon)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate, timeout, what, interval=0.5):
    """Call ``predicate`` until it returns something true and return that; after ``timeout``
    seconds raise TimeoutError naming ``what`` (a string, or a function giving one then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = what() if callable(what) else what
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def start(argv, log=None, cwd="/", env=None, preexec_fn=None):
    """Start ``argv`` in a session of its own (so it and whatever it forks stop as one group),
    stdout and stderr appended to ``log`` (discarded without one)."""
    with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        return subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 -- the bench's cgroup must hold the child from its start
        )


def killpg(pid, sig):
    """Send ``sig`` to the process group ``pid`` leads (or to ``pid`` if it leads none)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(procs, timeout=10):
    """Stop the process groups of ``procs`` (Popen objects started by :func:`start`): SIGTERM to
    all, up to ``timeout`` seconds for all of them to exit, then SIGKILL to the groups, which
    also takes what a daemon left behind in its group."""
    for proc in procs:
        if proc.poll() is None:
            killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
        # The group outlives its leader while a child it forked runs; the pid is not reused
        # while the group exists, so this reaches only what the daemon left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def kill_all(find, grace=5.0):
    """Stop every process ``find()`` lists (pids): SIGTERM, up to ``grace`` seconds for them to
    go, then SIGKILL to what ``find()`` still lists."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = find()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = find()
        if not pids:
            return


def processes_under(path):
    """Pids of this user's processes (this one aside) whose command line mentions ``path``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if path in cmdline:
            found.append(int(entry))
    return found


# -- Salt configuration ------------------------------------------------------------------------


def write_yaml(path, data):
    # JSON is YAML, and needs nothing beyond the standard library.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


def _daemon_config(role, root, log_level):
    """What every daemon of a throwaway cluster shares: every file below its own ``root``
    (Salt puts the relative paths there), so several daemons share one machine."""
    return {
        "root_dir": root,
        "pki_dir": "pki",
        "cachedir": "cache",
        "sock_dir": "run",
        "pidfile": f"run/salt-{role}.pid",
        "log_file": f"{role}.log",
        "log_level_logfile": log_level,
        "user": getpass.getuser(),
        # Resolving every address of the host costs each daemon seconds at start.
        "enable_fqdns_grains": False,
    }


def write_master(root, file_roots, pillar_roots, log_level="warning", **options):
    """A master config below ``root`` (``root/conf/master``) that accepts any minion; returns
    the config directory, what ``salt -c`` takes."""
    conf = dict(
        _daemon_config("master", root, log_level),
        # A throwaway master: accept whatever minion knocks (only ours run here).
        auto_accept=True,
        fileserver_backend=["roots"],
        file_roots={"base": list(file_roots)},
        pillar_roots={"base": list(pillar_roots)},
        # lssd's run channel: a run's torrent reaches its minions through this ext_pillar.
        ext_pillar=[{"lssd": {}}],
    )
    conf.update(options)
    write_yaml(os.path.join(root, "conf", "master"), conf)
    return os.path.join(root, "conf")


def write_minion(root, minion_id, master, log_level="warning", **options):
    """A minion config below ``root`` (``root/conf/minion``) for the master at ``master``;
    returns the config directory."""
    conf = dict(
        _daemon_config("minion", root, log_level),
        id=minion_id,
        master=master,
        # Retry the key exchange every second, not after Salt's 10 s, with no random delay:
        # the master accepts every key at once.
        acceptance_wait_time=1,
        random_reauth_delay=0,
        **options,
    )
    write_yaml(os.path.join(root, "conf", "minion"), conf)
    return os.path.join(root, "conf")


def write_pillar(pillar_dir, lssd, peers, destination_path):
    """The lssd pillar of a throwaway cluster: ``lssd`` for every minion and the master, and
    for the minions matching ``peers`` a ``destination_path`` of their own (a template such as
    ``/x/{{ grains['id'] }}/app``), as the peers share one machine. Only the peers' pillar sets
    it, so the orchestrate, which hands the roles the master's view of pillar lssd, leaves it
    alone."""
    os.makedirs(pillar_dir, exist_ok=True)
    with open(os.path.join(pillar_dir, "top.sls"), "w") as fh:
        fh.write(f"base:\n  '*':\n    - lssd\n  '{peers}':\n    - lssd_destination\n")
    write_yaml(os.path.join(pillar_dir, "lssd.sls"), {"lssd": lssd})
    with open(os.path.join(pillar_dir, "lssd_destination.sls"), "w") as fh:
        fh.write(f"lssd:\n  destination_path: '{destination_path}'\n")


def salt_argv(tool, conf_dir, *args):
    """argv of the Salt CLI ``tool`` (salt, salt-run, salt-master, ...) for the config in
    ``conf_dir``."""
    return [os.path.join(BIN, tool), "-c", conf_dir, *[str(a) for a in args]]


def wait_minions(ping, minions, timeout):
    """Until every id in ``minions`` has answered; ``ping()`` returns the ids that answer a
    test.ping now. Raises TimeoutError naming the ones that never did."""
    seen = set()

    def all_up():
        seen.update(ping())
        return set(minions) <= seen

    def missing():
        return f"minions {sorted(set(minions) - seen)} to answer test.ping"

    wait_for(all_up, timeout, missing, interval=1)


# -- a build -----------------------------------------------------------------------------------


def write_random(path, size, chunk=4 << 20):
    """``size`` incompressible bytes (like images or jars) at ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            part = min(left, chunk)
            fh.write(os.urandom(part))
            left -= part


def _write_text(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def make_build(root, size_mb):
    """A build-like tree at ``root``: code, config, an executable ``bin/app`` with a symlink to
    it, a ``.git/`` that lssd's default excludes drop, and ``size_mb`` MiB of incompressible
    assets in 4 MiB files. Returns how many files it wrote."""
    for i in range(40):
        _write_text(os.path.join(root, "lib", f"pkg{i % 5}", f"module{i}.py"),
                    f"def handler_{i}(request):\n    return {i}\n" * 50)
    _write_text(os.path.join(root, "bin", "app"), "#!/bin/sh\necho 'hello from the demo build'\n", 0o755)
    os.symlink("app", os.path.join(root, "bin", "start"))
    _write_text(os.path.join(root, "conf", "app.conf"), "workers = 8\n")
    _write_text(os.path.join(root, ".git", "HEAD"), "ref: refs/heads/main\n")
    size, blob = size_mb << 20, 4 << 20
    blobs = range(0, size, blob)
    for index, offset in enumerate(blobs):
        write_random(os.path.join(root, "assets", f"blob{index:03d}.bin"), min(blob, size - offset))
    return 40 + 3 + len(blobs)
