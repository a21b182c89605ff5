"""Helpers of the integration tests: the environment the fixtures start and how to read results.

The fixtures (conftest.py) start a real salt-master and four salt-minions (tracker, seeder,
web1, web2), once for the package.

All of them run on 127.0.0.1 from one short temporary directory (unix socket paths must stay
short), each minion with its own root_dir and cachedir, hence its own lssd state directory, as
hosts sharing one machine would. The master serves the repository as the README's classic install
does (file_roots: its ``salt/`` SLS tree, then the repository itself for ``saltutil.sync_all``,
then ``files/`` here for the tests' hook SLS). The minions load the ``lssd`` modules through the
``salt.loader`` entry point of the installed package (no sync).

Pillar: ``lssd.sls`` holds what every test shares (the build, owner, tracker, targets) and goes
to every minion and to the master; ``case.sls`` belongs to the test that runs: its :class:`Case`
writes the test's own tag and a ``destination_path`` templated per minion
(``.../{{ grains['id'] }}/app``), so no test sees another's tags or directories, and any test
runs alone (``-k``).
"""

import hashlib
import json
import os
import pathlib
import re
import time

import pytest
import yaml
from lssd_testutil import free_port, lssd_processes  # noqa: F401  (free_port: for conftest)

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = pathlib.Path(__file__).resolve().parent / "files"
PEERS = ("web1", "web2")
LINGER = 3
BUILD_MB = 20
# A developer's checkout holds a virtualenv and git objects the fileserver need not walk.
FILE_IGNORE_REGEX = [r"^\.venv/", r"^\.git/", r"^bench/results/", r"\.egg-info/"]
TOP = "base:\n  '*':\n    - lssd\n    - case\n"


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

    def __init__(self, root, master, minions, build, tracker_port, pillar_dir):
        self.root = root
        self.master = master
        self.minions = minions
        self.build = build
        self.tracker_port = tracker_port
        self.pillar_dir = pillar_dir
        # Explicit salt CLI timeouts: on a loaded machine Salt's default of 5 s (then one
        # find_job question within gather_job_timeout) reports slow minions as missing.
        self.salt = master.salt_cli(timeout=300)
        self.salt_run = master.salt_run_cli(timeout=1200)
        self.recorded = 0

    @property
    def master_id(self):
        """The id the orchestrate renders with, hence the master's pillar id."""
        return self.master.config["id"]

    def state_dir(self, minion):
        return pathlib.Path(self.minions[minion].config["cachedir"]) / "lssd"

    def orchestrate(self, sls="lssd.orch.deploy", pillar=None, test=False):
        args = ["state.orchestrate", sls]
        if pillar is not None:
            args.append("pillar=" + json.dumps(pillar))
        if test:
            args.append("test=True")
        ret = self.salt_run.run(*args)
        record = os.environ.get("LSSD_IT_RECORD")
        if record:
            # For a person reading a run afterwards: each orchestrate's command and output.
            self.recorded += 1
            path = pathlib.Path(record) / f"{self.recorded:03d}-{sls}.json"
            path.write_text(json.dumps({"args": args, "returncode": ret.returncode, "data": ret.data}))
        return ret

    def orchestrate_plan(self, sls="lssd.orch.deploy", pillar=None):
        """The orchestrate's steps as rendered on the master, by state ID; nothing runs."""
        args = ["state.orchestrate_show_sls", sls]
        if pillar is not None:
            args.append("pillar=" + json.dumps(pillar))
        ret = self.salt_run.run(*args)
        assert isinstance(ret.data, dict), f"show_sls printed no JSON: {ret.stdout} {ret.stderr}"
        (steps,) = ret.data.values()
        assert isinstance(steps, dict), f"the orchestrate failed to render: {steps}"
        plan = {}
        for step_id, body in steps.items():
            (module,) = [k for k in body if not k.startswith("__")]
            args, function = {}, module
            for item in body[module]:
                if isinstance(item, dict):
                    args.update(item)
                else:
                    function = f"{module}.{item}"
            plan[step_id] = dict(args, function=function)
        return plan

    def call(self, minion, function, *args, **kwargs):
        """``salt <minion> <function>``: the return value (fails the test if the call failed)."""
        ret = self.salt.run(function, *args, minion_tgt=minion, **kwargs)
        assert ret.returncode == 0, f"{function} on {minion} failed: {ret.stdout} {ret.stderr}"
        return ret.data

    def processes(self):
        return lssd_processes(self.root)

    def running_roles(self):
        """The lssd roles still running below the package's directory, e.g. ``{'peer', 'tracker'}``."""
        return {cmdline.split("salt_lssd ", 1)[1].split()[0] for _, cmdline in self.processes()}


class Case:
    """One test's own corner of the fleet: its tags, directories and pillar (``case.sls``).

    ``pillar(**lssd)`` rewrites the test's pillar (every minion and the master see it); the
    tag and the per-minion ``destination_path`` are always in it unless given otherwise.
    ``close()`` leaves the pillar as it found it.
    """

    def __init__(self, env, name):
        self.env = env
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        # Short tags (the test's name would make 60 characters and more), unique per test.
        self.tag = f"T-{slug[5:25].strip('_-')}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        self.dir = env.root / "cases" / slug
        self.dir.mkdir(parents=True)
        self.pillar()

    def tags(self, n):
        """``n`` tags of this test: ``<tag>-1`` ... ``<tag>-<n>``."""
        return [f"{self.tag}-{i}" for i in range(1, n + 1)]

    def destination(self, peer):
        return self.dir / peer / "app"

    def pillar(self, **lssd):
        """Write this test's pillar: ``lssd`` keys over the case's tag and destination_path."""
        settings = {"tag": self.tag, **lssd}
        lines = yaml.safe_dump({"lssd": settings}, default_flow_style=False).splitlines()
        if "destination_path" not in lssd:
            # Rendered per minion: each peer its own directory, though all share this host.
            lines.append(f"  destination_path: {self.dir}/{{{{ grains['id'] }}}}/app")
        (self.env.pillar_dir / "case.sls").write_text("\n".join(lines) + "\n")

    def top(self, text):
        (self.env.pillar_dir / "top.sls").write_text(text)

    def close(self):
        (self.env.pillar_dir / "case.sls").write_text("{}\n")
        self.top(TOP)

    def tags_in(self, peer):
        destination = self.destination(peer)
        if not destination.exists():
            return []
        return sorted(n for n in os.listdir(destination) if n != "current")

    def current_of(self, peer):
        return os.readlink(self.destination(peer) / "current")


def orchestrate_states(ret):
    """The orchestrate's state results, keyed by state ID (``lssd-peers`` ...)."""
    assert isinstance(ret.data, dict), f"orchestrate printed no JSON: {ret.stdout} {ret.stderr}"
    data = ret.data.get("data", ret.data)
    (per_master,) = data.values()
    assert isinstance(per_master, dict), f"orchestrate failed to render: {per_master}"
    return {key.split("_|-")[1]: value for key, value in per_master.items()}


def orchestrate_errors(ret):
    """The render errors of an orchestrate that failed before any step ran, as one string."""
    assert isinstance(ret.data, dict), f"orchestrate printed no JSON: {ret.stdout} {ret.stderr}"
    data = ret.data.get("data", ret.data)
    (per_master,) = data.values()
    assert isinstance(per_master, list), f"the orchestrate rendered and ran steps: {per_master}"
    return "\n".join(per_master)


def minion_states(orch_state):
    """Per minion, the state results a ``salt.state`` step of the orchestrate reported."""
    return (orch_state.get("changes") or {}).get("ret") or {}
