"""Fixtures every layer shares; the main one: no lssd process outlives a test."""

import os
import signal
import time

import pytest
from lssd_testutil import lssd_processes


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
