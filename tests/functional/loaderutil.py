"""Minion options and loaders for functional tests (shared by conftest and test modules)."""

import os

import salt.config
from lssd_testutil import free_port  # noqa: F401  (for conftest and tests)
from saltfactories.utils.functional import Loaders


def minion_loaders(root, name, tracker_port, **lssd):
    """Loaders for a minion ``name`` with its own cachedir below ``root``."""
    root = os.path.join(str(root), name)
    opts = salt.config.minion_config(None)
    opts.update(
        id=name,
        root_dir=root,
        cachedir=os.path.join(root, "cache"),
        pki_dir=os.path.join(root, "pki"),
        sock_dir=os.path.join(root, "sock"),
        extension_modules=os.path.join(root, "cache", "extmods"),
        file_client="local",
        file_roots={"base": [os.path.join(root, "srv")]},
        pillar_roots={"base": [os.path.join(root, "pillar")]},
        log_file=os.path.join(root, "minion.log"),
    )
    config = {"tracker": {"host": "127.0.0.1", "port": tracker_port}, "linger": 5}
    config.update(lssd)
    opts["lssd"] = config
    for key in ("cachedir", "pki_dir", "sock_dir"):
        os.makedirs(opts[key], exist_ok=True)
    return Loaders(opts, loaded_base_name=f"lssd_functional_{name}")


def stop_everything(loaders):
    """Stop whatever a failed test left running, then drop the loaders' state."""
    for func in ("peer_stop", "seed_stop", "tracker_stop"):
        try:
            getattr(loaders.modules.lssd, func)()
        except Exception:  # pylint: disable=broad-except
            pass
    loaders.reset_state()
