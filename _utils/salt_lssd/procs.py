"""Detached processes: start them, find them again from a later Salt job, stop them.

Each detached role (tracker, seeder, peer) runs as ``python -m salt_lssd <role> <run_dir>``
in its own session, outliving the Salt job that started it. Its ``run_dir`` holds:

- ``config.json``: what the starter asked for;
- ``pid``: "<pid> <start time>" -- the start time (from /proc) guards against a reused pid;
- ``state.json``: what the process reports (status, progress, rates), rewritten atomically;
- ``log``: its stdout and stderr;
- ``exit``: its exit status, written by the shell that started it (a killed process cannot
  report its own end);
- ``reserve.json``: space set aside at start, where the last state goes when ``state.json``
  cannot be written (a full disk), so the waiting job still learns why.

A process is *running* when its pidfile names a live, non-zombie process with the same start
time whose command line is ``python -m salt_lssd <role> <run_dir>`` for that very run
directory, and the pidfile and run directory belong to the user running lssd and only it can
write them: a pidfile someone else planted never makes us signal a process.
Starting what runs is a no-op; stopping what does not run says so.
"""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

from salt_lssd import LssdError, credentials
from salt_lssd.common import ensure_dir, read_json, write_atomic, write_json_atomic

# The directory holding the salt_lssd package: on PYTHONPATH for the child, so the classic
# install (package synced to <extmods>/utils) needs no manual step.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The last state when state.json cannot be written: a file of blanks of this size.
RESERVE = "reserve.json"
_RESERVE_SIZE = 4096


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


def _private(path, st):
    """Whether ``st`` (of ``path``) is ours and, for a directory, writable by us alone."""
    if st.st_uid != os.geteuid():
        return False
    return not (stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022)


def _runs_from(pid, run_dir):
    """Whether ``pid``'s command line is ``... -m salt_lssd <role> <run_dir>`` for this run_dir."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0")[:-1]]
    except OSError:
        return False
    if len(args) < 5 or args[-4:-2] != ["-m", "salt_lssd"]:
        return False
    role, where = args[-2], os.path.abspath(args[-1])
    name = os.path.basename(where)
    return where == os.path.abspath(run_dir) and (name == role or name.startswith(role + "-"))


def _read_pidfile(run_dir):
    """(pid, start time) from ``run_dir``'s pidfile if it and its directories are ours alone."""
    run_dir = os.path.abspath(run_dir)
    try:
        fd = os.open(os.path.join(run_dir, "pid"), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        st = os.fstat(fd)
        text = fh.read(64)
    try:
        trusted = _private(run_dir, st) and all(
            _private(d, os.stat(d)) for d in (run_dir, os.path.dirname(run_dir))
        )
        pid_s, start_s = text.split()
        return (int(pid_s), int(start_s)) if trusted and stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):
        return None


def pid_of(run_dir):
    """The pid of the lssd process running from ``run_dir``, or None (see the module doc)."""
    found = _read_pidfile(run_dir)
    if found is None:
        return None
    pid, start = found
    if _proc_start_time(pid) != start or not _runs_from(pid, run_dir):
        return None
    return pid


def write_pidfile(run_dir):
    pid = os.getpid()
    write_atomic(os.path.join(run_dir, "pid"), f"{pid} {_proc_start_time(pid)}\n")


def state(run_dir):
    """The last state the process reported, with ``running`` telling whether it is alive."""
    data = read_json(os.path.join(run_dir, "state.json"), default={}) or {}
    reserve = _read_reserve(run_dir)
    if reserve.get("updated", 0) > data.get("updated", 0):
        data = reserve
    data["running"] = pid_of(run_dir) is not None
    return data


def _read_reserve(run_dir):
    try:
        with open(os.path.join(run_dir, RESERVE), "rb") as fh:
            text = fh.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def exit_status(run_dir):
    """How the process of ``run_dir`` ended, in words ("killed by SIGKILL", "exited with
    code 1"), or None while its starting shell has not recorded it."""
    try:
        with open(os.path.join(run_dir, "exit")) as fh:
            code = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    if code > 128:  # the shell's way of saying "killed by signal code - 128"
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            return f"killed by signal {code - 128}"
    return f"exited with code {code}"


def vanished(run_dir, wait=3.0):
    """Why a process that left no final status ended: its exit status (waiting up to
    ``wait`` s for the shell to record it) and the tail of its log."""
    deadline = time.monotonic() + wait
    how = exit_status(run_dir)
    while how is None and time.monotonic() < deadline:
        time.sleep(0.05)
        how = exit_status(run_dir)
    tail = _tail(os.path.join(run_dir, "log"), 5).strip()
    return f"{how or 'vanished'} (no final report)" + (f"; last lines of {run_dir}/log:\n{tail}" if tail else "")


def read_config(run_dir):
    return read_json(os.path.join(run_dir, "config.json"), default={}) or {}


def spawn(role, run_dir, config, ready_timeout=30):
    """Start ``role`` detached with ``config``; return its first reported state.

    Waits until the process reports something other than ``starting`` (it is listening,
    seeding, downloading) or fails; a failure to start raises LssdError with its reason.
    """
    launch(role, run_dir, config)
    return await_ready(role, run_dir, ready_timeout)


def launch(role, run_dir, config):
    """Start ``role`` detached with ``config`` and return at once: the caller works while it
    starts, then calls ``await_ready`` (or ``stop`` on failure)."""
    ensure_dir(run_dir)
    pid = pid_of(run_dir)
    if pid is not None:
        raise LssdError(f"{role} already running from {run_dir} (pid {pid})")
    for stale in ("pid", "state.json", RESERVE):
        try:
            os.unlink(os.path.join(run_dir, stale))
        except FileNotFoundError:
            pass
    # Blanks the shell overwrites in place with the exit status (no new space needed then).
    write_atomic(os.path.join(run_dir, "exit"), " " * 16)
    write_json_atomic(os.path.join(run_dir, "config.json"), config)
    _launch(role, run_dir)


def abandon(role, run_dir, ready_timeout=30):
    """Stop a process ``launch`` started, once it has started: ``stop`` alone would miss one
    that has not yet written its pidfile."""
    try:
        await_ready(role, run_dir, ready_timeout)
    except LssdError:
        return  # it failed to start, and await_ready made sure it is gone
    stop(run_dir)


def await_ready(role, run_dir, ready_timeout=30):
    """The first state the process ``launch`` started reports; see ``spawn``."""
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
    # Stopped if it still runs; if it is gone (killed), this removes what it was given.
    stop(run_dir)
    if current["running"]:
        raise LssdError(
            f"{role} did not report ready within {ready_timeout}s; its log is {run_dir}/log:\n"
            + _tail(os.path.join(run_dir, "log"))
        )
    if current.get("status") == "failed":
        raise LssdError(f"{role} failed to start: {current.get('error', 'see ' + run_dir + '/log')}")
    raise LssdError(f"{role} ended before it reported ready: {vanished(run_dir)}")


def _launch(role, run_dir):
    """Start ``python -m salt_lssd <role> <run_dir>`` detached, its output going to the log."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
    )
    log = os.fdopen(_private_file(os.path.join(run_dir, "log"), os.O_APPEND), "ab")
    try:
        # A short-lived launcher starts the role in a new session and exits at once, so the
        # role is re-parented away from the Salt job (which may be a long-lived process
        # that would never reap it) and survives the job's process group.
        # The role runs under a small shell that records its exit status, so a role killed
        # by a signal (no chance to report) still tells the waiting job how it ended.
        launcher = (
            "import subprocess, sys\n"
            "subprocess.Popen(sys.argv[1:], start_new_session=True, close_fds=True,\n"
            "                 stdin=subprocess.DEVNULL)\n"
        )
        record = '"$@"; echo "$?" 1<>"$0"'
        subprocess.run(
            [sys.executable, "-c", launcher, "/bin/sh", "-c", record, os.path.join(run_dir, "exit"),
             sys.executable, "-m", "salt_lssd", role, run_dir],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            cwd="/",
        )
    finally:
        log.close()


def _private_file(path, flags):
    """A file descriptor for writing ``path``, readable by its owner only whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _tail(path, lines=20):
    try:
        with open(path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def stop(run_dir, timeout=15):
    """Stop the process running from ``run_dir``; return its pid, or None if none ran.

    Once it is gone, the deploy key it was given in ``run_dir`` (a peer's) is removed: a
    process ended by SIGKILL could not remove it itself."""
    pid = _stop(run_dir, timeout)
    if pid_of(run_dir) is None:
        credentials.remove(run_dir)
    return pid


def _stop(run_dir, timeout):
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
        # What a role writes (libtorrent's downloads included) is for this user alone,
        # whatever umask the Salt job that started it had.
        os.umask(0o077)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        # Taken while there is space: the last report still fits when the disk is full.
        with os.fdopen(_private_file(os.path.join(run_dir, RESERVE), os.O_TRUNC), "wb") as fh:
            fh.write(b" " * _RESERVE_SIZE)
        write_pidfile(run_dir)
        self.report()

    def _on_term(self, signum, frame):
        self.stopping = True

    @property
    def status(self):
        return self._state.get("status")

    def report(self, **fields):
        """Write the state with ``fields``; LssdError naming the cause if it cannot be written
        (not for a final "failed" report, which goes to the reserve and ends the process)."""
        self._state.update(fields)
        self._state["updated"] = time.time()
        path = os.path.join(self.run_dir, "state.json")
        try:
            write_json_atomic(path, self._state)
        except OSError as exc:
            cause = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
            if self._state.get("status") != "failed":
                self._state.update(status="failed", error=f"cannot write {path}: {cause}")
            self._write_reserve()
            if fields.get("status") != "failed":
                raise LssdError(self._state["error"]) from exc

    def _write_reserve(self):
        """The state, over the blanks set aside at start (in place: no new space needed)."""
        keep = {k: self._state.get(k) for k in ("status", "pid", "started", "updated", "progress")}
        keep["error"] = str(self._state.get("error") or "")[: _RESERVE_SIZE // 2]
        data = json.dumps(keep).encode()[:_RESERVE_SIZE]
        try:
            fd = os.open(os.path.join(self.run_dir, RESERVE), os.O_WRONLY)
            try:
                os.pwrite(fd, data.ljust(_RESERVE_SIZE), 0)
            finally:
                os.close(fd)
        except OSError:
            pass  # nothing more can be done; the exit status still tells the waiting job


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
