"""Functional tests: the real ``lssd`` modules through Salt's loader, no daemons.

Each role gets its own minion options (id, cachedir, hence its own lssd state directory), as
several minions sharing one machine would.
"""

import os
import socket

import pytest
import salt.config
from saltfactories.utils.functional import Loaders


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracker_port():
    return free_port()


@pytest.fixture
def make_minion(tmp_path, tracker_port):
    """make_minion(name, **lssd_config) -> Loaders for a minion with its own cachedir."""
    made = []

    def make(name, **lssd):
        root = tmp_path / name
        opts = salt.config.minion_config(None)
        opts.update(
            id=name,
            root_dir=str(root),
            cachedir=str(root / "cache"),
            pki_dir=str(root / "pki"),
            sock_dir=str(root / "sock"),
            extension_modules=str(root / "cache" / "extmods"),
            file_client="local",
            file_roots={"base": [str(root / "srv")]},
            pillar_roots={"base": [str(root / "pillar")]},
            log_file=str(root / "minion.log"),
        )
        config = {"tracker": {"host": "127.0.0.1", "port": tracker_port}, "linger": 5}
        config.update(lssd)
        opts["lssd"] = config
        for key in ("cachedir", "pki_dir", "sock_dir"):
            os.makedirs(opts[key], exist_ok=True)
        loaders = Loaders(opts, loaded_base_name=f"lssd_functional_{name}")
        made.append(loaders)
        return loaders

    yield make
    for loaders in made:
        # Stop whatever a failed test left running, then drop the loaders' state.
        for func in ("peer_stop", "seed_stop", "tracker_stop"):
            try:
                getattr(loaders.modules.lssd, func)()
            except Exception:  # pylint: disable=broad-except
                pass
        loaders.reset_state()

