"""Salt loader entry point: ``pip install .`` makes the modules, states, runners and grains
load with no sync."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# In the repository this package sits at _utils/salt_lssd, beside _modules.
_TREE = os.path.dirname(os.path.dirname(_HERE))

# Salt's loader type -> the repository directory setup.py installs as salt_lssd.loader_<type>.
KINDS = {"modules": "_modules", "states": "_states", "runners": "_runners", "grains": "_grains",
         "pillar": "_pillar"}


def _loader_dir(installed_name, tree_name):
    # setup.py installs _modules as salt_lssd/loader_modules (and so on); an editable
    # install leaves the package in the repository, where the directories keep their names.
    installed = os.path.join(_HERE, installed_name)
    if os.path.isdir(installed):
        return installed
    return os.path.join(_TREE, tree_name)


def get_dirs():
    return {kind: [_loader_dir(f"loader_{kind}", tree)] for kind, tree in KINDS.items()}


def file_roots():
    """The directory to add to the master's file_roots for ``lssd.orch.deploy`` and the other
    SLS files: the installed copy (salt_lssd/file_roots), else the repository's ``salt/``.
    Salt's loader entry points provide modules, never SLS files, so this is the one step a
    pip-only install needs on the master."""
    return _loader_dir("file_roots", "salt")
