"""Helpers of the integration tests: the environment the fixtures start and how to read results.

The fixtures (conftest.py) start a real salt-master and four salt-minions (tracker, seeder,
web1, web2), once for the package.

All of them run on 127.0.0.1 from one short temporary directory (unix socket paths must stay
short), each minion with its own root_dir and cachedir, hence its own lssd state directory, as
hosts sharing one machine would. The master serves the repository as the README's classic install
does (file_roots: its ``salt/`` SLS tree, then the repository itself for ``saltutil.sync_all``); its pillar (conftest.py) gives every minion the ``lssd`` settings and each peer its
own ``destination_path``. The minions load the ``lssd`` modules through the ``salt.loader`` entry
point of the installed package (no sync).
"""

import json
import pathlib
import time

import pytest
from lssd_testutil import free_port, lssd_processes  # noqa: F401  (free_port: for conftest)

REPO = pathlib.Path(__file__).resolve().parents[2]
PEERS = ("web1", "web2")
LINGER = 3
BUILD_MB = 20
# A developer's checkout holds a virtualenv and git objects the fileserver need not walk.
FILE_IGNORE_REGEX = [r"^\.venv/", r"^\.git/", r"^bench/results/", r"\.egg-info/"]


def wait_until(predicate, timeout, what, interval=0.25):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Env:
    """What the tests need: daemons, paths and small helpers around the CLIs."""

    def __init__(self, root, master, minions, build, tracker_port):
        self.root = root
        self.master = master
        self.minions = minions
        self.build = build
        self.tracker_port = tracker_port
        self.salt = master.salt_cli(timeout=300)
        self.salt_run = master.salt_run_cli(timeout=600)

    def destination(self, peer):
        return self.root / peer / "opt" / "app"

    def state_dir(self, minion):
        return pathlib.Path(self.minions[minion].config["cachedir"]) / "lssd"

    def orchestrate(self, sls="lssd.orch.deploy", pillar=None, test=False):
        args = ["state.orchestrate", sls]
        if pillar is not None:
            args.append("pillar=" + json.dumps(pillar))
        if test:
            args.append("test=True")
        return self.salt_run.run(*args)

    def call(self, minion, function, *args, **kwargs):
        """``salt <minion> <function>``: the return value (fails the test if the call failed)."""
        ret = self.salt.run(function, *args, minion_tgt=minion, **kwargs)
        assert ret.returncode == 0, f"{function} on {minion} failed: {ret.stdout} {ret.stderr}"
        return ret.data

    def processes(self):
        return lssd_processes(self.root)


def orchestrate_states(ret):
    """The orchestrate's state results, keyed by state ID (``lssd-peers`` ...)."""
    assert isinstance(ret.data, dict), f"orchestrate printed no JSON: {ret.stdout} {ret.stderr}"
    data = ret.data.get("data", ret.data)
    (per_master,) = data.values()
    assert isinstance(per_master, dict), f"orchestrate failed to render: {per_master}"
    return {key.split("_|-")[1]: value for key, value in per_master.items()}


def minion_states(orch_state):
    """Per minion, the state results a ``salt.state`` step of the orchestrate reported."""
    return (orch_state.get("changes") or {}).get("ret") or {}


