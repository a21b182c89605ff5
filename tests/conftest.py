"""Fixtures every layer shares; the main one: no lssd process outlives a test."""

import os
import signal
import time

import pytest


def lssd_processes(under):
    """(pid, cmdline) of live ``python -m salt_lssd`` processes whose run_dir is below ``under``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2 :][:1] in (b"Z", b"X"):
            continue
        args = [a.decode("utf-8", "replace") for a in argv if a]
        if "salt_lssd" in args and any(a.startswith(str(under)) for a in args):
            found.append((int(entry), " ".join(args)))
    return found


@pytest.fixture(autouse=True)
def no_stray_lssd_processes(request, tmp_path_factory):
    """Fail the test if any lssd process it started is still alive after it (then kill it)."""
    base = tmp_path_factory.getbasetemp()
    yield
    if request.node.get_closest_marker("integration") is not None:
        return  # package-scoped daemons run across tests; their module checks at teardown
    deadline = time.monotonic() + 10
    survivors = lssd_processes(base)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = lssd_processes(base)
    for pid, _ in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not survivors, f"lssd processes outlived the test: {survivors}"


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "lssd-state"
    path.mkdir()
    return str(path)
