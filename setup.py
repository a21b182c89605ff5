"""salt-lssd: large-scale server deploys over BitTorrent, as a SaltStack extension.

The repository is a Salt file tree (the classic install: file_roots or gitfs plus
``saltutil.sync_all``): ``_modules/``, ``_states/``, ``_runners/`` and ``_utils/`` at the top,
the SLS tree in ``salt/``. ``pip install .`` installs the same code as the
``salt_lssd`` package and registers its loader directories through the ``salt.loader`` entry
point, so the ``lssd`` execution, state and runner modules and grains load with no sync.
The SLS tree ships too, as ``salt_lssd/file_roots``: Salt finds SLS files only through the
master's file_roots (no entry point provides them), so ``python -m salt_lssd file_roots``
prints the directory to add there.
"""

from setuptools import setup

setup(
    name="salt-lssd",
    version="0.1.0",
    description="Large-scale server deploys over BitTorrent, driven by Salt",
    long_description=__doc__,
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=[
        "salt_lssd",
        "salt_lssd.tracker",
        "salt_lssd.runner",
        "salt_lssd.loader_modules",
        "salt_lssd.loader_states",
        "salt_lssd.loader_runners",
        "salt_lssd.loader_grains",
        "salt_lssd.loader_pillar",
        "salt_lssd.file_roots",
    ],
    package_dir={
        "salt_lssd": "_utils/salt_lssd",
        "salt_lssd.tracker": "_utils/salt_lssd/tracker",
        "salt_lssd.runner": "_utils/salt_lssd/runner",
        "salt_lssd.loader_modules": "_modules",
        "salt_lssd.loader_states": "_states",
        "salt_lssd.loader_runners": "_runners",
        "salt_lssd.loader_grains": "_grains",
        "salt_lssd.loader_pillar": "_pillar",
        "salt_lssd.file_roots": "salt",
    },
    package_data={"salt_lssd.file_roots": ["lssd/*", "lssd/*/*"]},
    install_requires=["libtorrent>=2.0", "pyyaml", "cryptography"],
    extras_require={
        "salt": ["salt>=3006"],
        "tests": [
            "salt>=3006",
            "pytest>=7",
            "pytest-salt-factories>=1.0.0",
            "pytest-timeout",
            # test_packaging builds the package with these, offline (no build isolation).
            "setuptools>=61",
            "wheel",
        ],
    },
    entry_points={"salt.loader": ["lssd = salt_lssd.loader:get_dirs"]},
)
