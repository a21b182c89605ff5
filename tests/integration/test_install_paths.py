"""The classic install path: the repository as file_roots and ``saltutil.sync_all``.

The other minions load lssd through the installed package's ``salt.loader`` entry point. This
one runs its Python with ``-S``: site-packages stays importable (Salt puts it on ``sys.path``),
but its ``.pth`` files are not read, so the editable install of ``salt_lssd`` -- package and
entry point -- is invisible, as on a minion where salt-lssd was never pip-installed. Only
``saltutil.sync_all`` can bring lssd to it, and the detached processes it starts must run the
synced copy from its extmods.
"""

import os
import sys

import pytest

from .lssd_integration import free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def classic(lssd_env):
    wrapper = lssd_env.root / "python-without-site"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    minion = lssd_env.master.salt_minion_daemon(
        "classic",
        defaults={"root_dir": str(lssd_env.root / "classic")},
        overrides={"interface": "127.0.0.1"},
        start_timeout=120,
    )
    minion.python_executable = str(wrapper)
    with minion.started():
        try:
            yield minion
        finally:
            lssd_env.salt.run("lssd.tracker_stop", minion_tgt="classic")
    # Later calls on every minion must not wait for one that is gone.
    lssd_env.master.salt_key_cli().run("--yes", "--delete", "classic")


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as fh:
        pairs = (item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        return {k.decode(): v.decode("utf-8", "replace") for k, v in pairs}


def test_sync_all_brings_lssd_and_detached_processes_run_the_synced_copy(lssd_env, classic):
    salt = lssd_env.salt
    extmods = classic.config["extension_modules"]

    # Nothing of lssd before the sync: not the package, not the entry point.
    ret = salt.run("lssd.status", minion_tgt="classic")
    assert ret.returncode != 0 and "lssd.status" in str(ret.data), ret

    synced = lssd_env.call("classic", "saltutil.sync_all")
    assert "modules.lssd" in synced["modules"]
    assert "states.lssd" in synced["states"]
    assert "utils.salt_lssd.__main__" in synced["utils"], synced["utils"]
    for rel in ("modules/lssd.py", "states/lssd.py", "utils/salt_lssd/__init__.py",
                "utils/salt_lssd/__main__.py", "utils/salt_lssd/procs.py"):
        assert os.path.isfile(os.path.join(extmods, rel)), rel
    # The tracker's code, a module or a package, is synced as well.
    tracker = os.path.join(extmods, "utils", "salt_lssd", "tracker")
    assert os.path.isfile(tracker + ".py") or os.path.isfile(os.path.join(tracker, "__init__.py"))

    status = lssd_env.call("classic", "lssd.status")
    assert status["state_dir"] == os.path.join(classic.config["cachedir"], "lssd")

    # A detached tracker started from the synced module runs the synced package.
    port = free_port()
    started = lssd_env.call("classic", "lssd.tracker_start", port=port, bind="127.0.0.1")
    pid = started["pid"]
    pythonpath = environ_of(pid)["PYTHONPATH"].split(os.pathsep)
    assert pythonpath[0] == os.path.join(extmods, "utils"), pythonpath
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[1:3] == [b"-m", b"salt_lssd"]
    tracker = lssd_env.call("classic", "lssd.tracker_status")
    assert tracker["running"] is True and tracker["port"] == port

    # The synced state module works as well.
    ret = salt.run("state.single", "lssd.tracker_stopped", "name=lssd-tracker", minion_tgt="classic")
    assert ret.returncode == 0, ret
    (result,) = ret.data.values()
    assert result["result"] is True and result["changes"]["tracker"]["new"] is None, result
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, f"tracker pid {pid} to exit")
