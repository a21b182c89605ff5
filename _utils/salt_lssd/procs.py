"""Detached processes: start them, find them again from a later Salt job, stop them.

Each detached role (tracker, seeder, peer) runs as ``python -m salt_lssd <role> <run_dir>``
in its own session, outliving the Salt job that started it. Its ``run_dir`` holds:

- ``config.json``: what the starter asked for;
- ``pid``: "<pid> <start time>" -- the start time (from /proc) guards against a reused pid;
- ``state.json``: what the process reports (status, progress, rates), rewritten atomically;
- ``log``: its stdout and stderr.

A process is *running* when its pidfile names a live, non-zombie process with the same start
time. Starting what runs is a no-op; stopping what does not run says so.
"""

import os
import signal
import subprocess
import sys
import time

from salt_lssd import LssdError
from salt_lssd.common import ensure_dir, read_json, write_atomic, write_json_atomic

# The directory holding the salt_lssd package: on PYTHONPATH for the child, so the classic
# install (package synced to <extmods>/utils) needs no manual step.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _proc_start_time(pid):
    """Start time of ``pid`` in clock ticks, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def pid_of(run_dir):
    """The pid of the process running from ``run_dir``, or None."""
    try:
        with open(os.path.join(run_dir, "pid")) as fh:
            pid_s, start_s = fh.read().split()
        pid, start = int(pid_s), int(start_s)
    except (FileNotFoundError, ValueError):
        return None
    if _proc_start_time(pid) != start:
        return None
    return pid


def write_pidfile(run_dir):
    pid = os.getpid()
    write_atomic(os.path.join(run_dir, "pid"), f"{pid} {_proc_start_time(pid)}\n")


def state(run_dir):
    """The last state the process reported, with ``running`` telling whether it is alive."""
    data = read_json(os.path.join(run_dir, "state.json"), default={}) or {}
    data["running"] = pid_of(run_dir) is not None
    return data


def read_config(run_dir):
    return read_json(os.path.join(run_dir, "config.json"), default={}) or {}


def spawn(role, run_dir, config, ready_timeout=30):
    """Start ``role`` detached with ``config``; return its first reported state.

    Waits until the process reports something other than ``starting`` (it is listening,
    seeding, downloading) or fails; a failure to start raises LssdError with its reason.
    """
    ensure_dir(run_dir)
    pid = pid_of(run_dir)
    if pid is not None:
        raise LssdError(f"{role} already running from {run_dir} (pid {pid})")
    for stale in ("pid", "state.json"):
        try:
            os.unlink(os.path.join(run_dir, stale))
        except FileNotFoundError:
            pass
    write_json_atomic(os.path.join(run_dir, "config.json"), config)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
    )
    log = open(os.path.join(run_dir, "log"), "ab")
    try:
        # A short-lived launcher starts the role in a new session and exits at once, so the
        # role is re-parented away from the Salt job (which may be a long-lived process
        # that would never reap it) and survives the job's process group.
        launcher = (
            "import subprocess, sys\n"
            "subprocess.Popen(sys.argv[1:], start_new_session=True, close_fds=True,\n"
            "                 stdin=subprocess.DEVNULL)\n"
        )
        subprocess.run(
            [sys.executable, "-c", launcher, sys.executable, "-m", "salt_lssd", role, run_dir],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            cwd="/",
        )
    finally:
        log.close()
    deadline = time.monotonic() + ready_timeout
    # Before the child writes its pidfile it does not count as running: give it a moment.
    grace = time.monotonic() + 5
    while time.monotonic() < deadline:
        current = state(run_dir)
        status = current.get("status")
        if status == "failed":
            stop(run_dir)  # it is exiting by itself; make sure it is gone before we answer
            raise LssdError(f"{role} failed to start: {current.get('error', 'see ' + run_dir + '/log')}")
        if status and status != "starting":
            return current
        if status in (None, "starting") and not current["running"] and time.monotonic() > grace:
            break  # died before reporting anything useful
        time.sleep(0.05)
    current = state(run_dir)
    if current["running"]:
        stop(run_dir)
    raise LssdError(
        f"{role} did not report ready within {ready_timeout}s; its log is {run_dir}/log:\n"
        + _tail(os.path.join(run_dir, "log"))
    )


def _tail(path, lines=20):
    try:
        with open(path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def stop(run_dir, timeout=15):
    """Stop the process running from ``run_dir``; return its pid, or None if none ran."""
    pid = pid_of(run_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_of(run_dir) is None:
            return pid
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while pid_of(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


class Reporter:
    """The running process's side: pidfile, state.json, and a SIGTERM flag."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.config = read_config(run_dir)
        self.stopping = False
        self.started = time.time()
        self._state = {"status": "starting", "pid": os.getpid(), "started": self.started}
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        write_pidfile(run_dir)
        self.report()

    def _on_term(self, signum, frame):
        self.stopping = True

    @property
    def status(self):
        return self._state.get("status")

    def report(self, **fields):
        self._state.update(fields)
        self._state["updated"] = time.time()
        write_json_atomic(os.path.join(self.run_dir, "state.json"), self._state)


def stop_each(role, run_dirs, tag=None):
    """Stop the processes of ``run_dirs`` (``{(role, tag): run_dir}``); say which ran."""
    stopped = {}
    for (_, each), run_dir in run_dirs.items():
        pid = stop(run_dir)
        if pid is not None:
            stopped[each] = pid
    if not stopped:
        comment = f"{role} for {tag} was not running" if tag else f"no {role} was running"
        return {"changed": False, "stopped": {}, "comment": comment}
    return {"changed": True, "stopped": stopped, "comment": f"stopped {role} for {', '.join(sorted(stopped))}"}
