"""procs: which pidfiles are trusted, and how a process's end is put in words."""

import os
import subprocess
import sys

import pytest
from salt_lssd import procs
from salt_lssd.common import ensure_dir


@pytest.fixture
def role_process(tmp_path):
    """start(run_dir, role) -> a process whose command line ends ``-m salt_lssd <role> <run_dir>``
    (a sleeping interpreter, not a real role), with its pidfile written in ``run_dir``."""
    started = []

    def start(run_dir, role="peer"):
        code = "import time; time.sleep(120)"
        proc = subprocess.Popen([sys.executable, "-c", code, "-m", "salt_lssd", role, str(run_dir)])
        started.append(proc)
        ensure_dir(run_dir)
        with open(os.path.join(run_dir, "pid"), "w") as fh:
            fh.write(f"{proc.pid} {_start_time(proc.pid)}\n")
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _start_time(pid):
    value = procs._proc_start_time(pid)  # pylint: disable=protected-access
    assert value is not None, f"no start time for {pid}"
    return value


def test_a_role_of_this_run_dir_is_found(tmp_path, role_process):
    run_dir = tmp_path / "run" / "peer-T1"
    proc = role_process(run_dir)
    assert procs.pid_of(run_dir) == proc.pid


def test_a_process_of_another_run_dir_or_role_is_not(tmp_path, role_process):
    other = role_process(tmp_path / "run" / "peer-T2")
    planted = tmp_path / "run" / "peer-T1"
    ensure_dir(planted)
    with open(planted / "pid", "w") as fh:
        fh.write(f"{other.pid} {_start_time(other.pid)}\n")
    assert procs.pid_of(planted) is None
    seeder_dir = tmp_path / "run" / "seeder-T3"
    role_process(seeder_dir, role="peer")  # a peer's command line in a seeder's directory
    assert procs.pid_of(seeder_dir) is None


def test_an_unrelated_process_is_not_signalled(tmp_path):
    victim = subprocess.Popen(["sleep", "120"])
    try:
        run_dir = ensure_dir(tmp_path / "run" / "peer-T1")
        with open(os.path.join(run_dir, "pid"), "w") as fh:
            fh.write(f"{victim.pid} {_start_time(victim.pid)}\n")
        assert procs.stop(run_dir) is None
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_pidfile_of_another_user_is_ignored(tmp_path, role_process):
    run_dir = tmp_path / "run" / "peer-T1"
    role_process(run_dir)
    os.chown(run_dir / "pid", 65534, 65534)
    assert procs.pid_of(run_dir) is None


@pytest.mark.parametrize("where", ["run_dir", "run"])
def test_a_directory_others_can_write_is_not_trusted(tmp_path, role_process, where):
    run_dir = tmp_path / "run" / "peer-T1"
    proc = role_process(run_dir)
    os.chmod(run_dir if where == "run_dir" else run_dir.parent, 0o777)
    assert procs.pid_of(run_dir) is None
    os.chmod(run_dir if where == "run_dir" else run_dir.parent, 0o700)
    assert procs.pid_of(run_dir) == proc.pid


def test_a_symlinked_pidfile_is_not_followed(tmp_path, role_process):
    real = tmp_path / "run" / "peer-T1"
    proc = role_process(real)
    linked = ensure_dir(tmp_path / "run" / "peer-T2")
    os.symlink(real / "pid", os.path.join(linked, "pid"))
    assert procs.pid_of(linked) is None
    assert procs.pid_of(real) == proc.pid


@pytest.mark.parametrize(
    "recorded, words",
    [("137", "killed by SIGKILL"), ("143", "killed by SIGTERM"), ("1", "exited with code 1"),
     ("0", "exited with code 0"), ("   ", None)],
)
def test_exit_status_in_words(tmp_path, recorded, words):
    (tmp_path / "exit").write_text(recorded + "\n")
    assert procs.exit_status(tmp_path) == words


def test_vanished_names_the_end_and_the_log(tmp_path):
    (tmp_path / "exit").write_text("137\n")
    (tmp_path / "log").write_text("line 1\nTraceback: boom\n")
    said = procs.vanished(tmp_path)
    assert said.startswith("killed by SIGKILL (no final report)") and "Traceback: boom" in said
    (tmp_path / "exit").write_text("      ")
    assert procs.vanished(tmp_path, wait=0.2).startswith("vanished (no final report)")
