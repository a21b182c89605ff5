"""A real salt-master and four salt-minions (tracker, seeder, web1, web2), started once for the package.

See lssd_integration.py for how they are laid out.
"""

import contextlib
import getpass
import grp
import os
import pathlib
import shutil
import signal
import tempfile
import textwrap
import time

import pytest
from lssd_testutil import make_build_tree

from .lssd_integration import BUILD_MB, FILE_IGNORE_REGEX, FILES, LINGER, PEERS, REPO, TOP, Case, Env, free_port


@pytest.fixture(scope="package")
def lssd_root():
    # Short on purpose: salt's unix sockets live below each daemon's root_dir.
    root = pathlib.Path(tempfile.mkdtemp(prefix="lssd-it-", dir="/tmp"))
    yield root
    if not os.environ.get("LSSD_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


def _write_pillar(root, build, tracker_port):
    """Pillar every test shares (lssd.sls) and the per-test case.sls (a Case rewrites it)."""
    pillar = root / "pillar"
    pillar.mkdir()
    user = getpass.getuser()
    group = grp.getgrgid(os.getgid()).gr_name
    (pillar / "top.sls").write_text(TOP)
    (pillar / "case.sls").write_text("{}\n")
    (pillar / "lssd.sls").write_text(
        textwrap.dedent(
            f"""\
            lssd:
              seeder_files_path: {build}
              destination_owner: {user}
              destination_group: {group}
              destination_mode: '0755'
              linger: {LINGER}
              timeout: 300
              current: true
              keep: 2
              tracker:
                host: 127.0.0.1
                port: {tracker_port}
                bind: 127.0.0.1
              targets:
                tracker: tracker
                seeder: seeder
                peer: 'web*'
            """
        )
    )
    return pillar


@pytest.fixture(scope="package")
def lssd_env(salt_factories, lssd_root):
    root = lssd_root
    build = pathlib.Path(make_build_tree(root / "build", data_mb=BUILD_MB))
    tracker_port = free_port()
    pillar = _write_pillar(root, build, tracker_port)
    master = salt_factories.salt_master_daemon(
        "lssd-master",
        defaults={"root_dir": str(root / "master")},
        overrides={
            "interface": "127.0.0.1",
            # The README's classic install: the SLS tree and the repository (for sync_all);
            # then the tests' own SLS (the hook).
            "file_roots": {"base": [str(REPO / "salt"), str(REPO), str(FILES)]},
            "file_ignore_regex": FILE_IGNORE_REGEX,
            "pillar_roots": {"base": [str(pillar)]},
            # The README's master configuration: lssd's run channel.
            "ext_pillar": [{"lssd": {}}],
            "fileserver_list_cache_time": 0,
        },
        start_timeout=120,
    )
    minions = {
        name: master.salt_minion_daemon(
            name,
            defaults={"root_dir": str(root / name)},
            overrides={"interface": "127.0.0.1"},
            start_timeout=120,
        )
        for name in ("tracker", "seeder") + PEERS
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(master.started())
        for minion in minions.values():
            stack.enter_context(minion.started())
        env = Env(root, master, minions, build, tracker_port, pillar)
        try:
            yield env
        finally:
            _stop_everything(env)


def _stop_everything(env):
    """Stop every lssd process the package started, then insist that none survived."""
    for function in ("lssd.peer_stop", "lssd.seed_stop", "lssd.tracker_stop"):
        env.salt.run("-L", function, minion_tgt=",".join(env.minions))
    deadline = time.monotonic() + 20
    survivors = env.processes()
    while survivors and time.monotonic() < deadline:
        time.sleep(0.2)
        survivors = env.processes()
    for pid, _ in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"lssd processes outlived the integration tests: {survivors}"


@pytest.fixture
def case(lssd_env, request):
    """This test's own tag, directories and pillar (see Case); its peers stopped afterwards."""
    case = Case(lssd_env, request.node.name)
    try:
        yield case
    finally:
        case.close()
        if lssd_env.processes():
            lssd_env.salt.run("lssd.peer_stop", minion_tgt="web*")
