"""`pip install .` (not editable) must carry the loader directories the entry point names,
and the SLS tree at the path ``python -m salt_lssd file_roots`` prints."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _offline_build_tools():
    """What the venv lacks to build the package without the package index ('' if nothing):
    setup.py's tests extra installs both."""
    missing = [name for name in ("setuptools", "wheel") if importlib.util.find_spec(name) is None]
    return " and ".join(missing)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as `pip install` (not editable) lays it out, built offline: --no-index and
    no build isolation, so the venv's setuptools builds it and no index is asked."""
    missing = _offline_build_tools()
    if missing:
        pytest.skip(f"building the package offline needs {missing} in this venv (scripts/bootstrap "
                    "installs them); without them pip would fetch them from the package index")
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), REPO],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    return target


def test_installed_package_points_salt_at_its_modules_states_runners_and_grains(installed):
    target = installed
    # -S: nothing from this venv (where the package is installed editable) may answer instead.
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import salt_lssd.loader as l; "
        "print(json.dumps({'file': l.__file__, 'dirs': l.get_dirs()}))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(target)], check=True, capture_output=True, text=True
    ).stdout
    found = json.loads(out)
    assert found["file"].startswith(str(target))
    assert os.path.isfile(os.path.join(found["dirs"]["modules"][0], "lssd.py"))
    assert os.path.isfile(os.path.join(found["dirs"]["states"][0], "lssd.py"))
    assert os.path.isfile(os.path.join(found["dirs"]["runners"][0], "lssd.py"))
    assert os.path.isfile(os.path.join(found["dirs"]["grains"][0], "lssd.py"))
    # Every subpackage the loader modules import is installed, not only the top one.
    for sub in ("tracker", "runner"):
        assert os.path.isfile(os.path.join(target, "salt_lssd", sub, "__init__.py")), sub
    assert all(d.startswith(str(target)) for dirs in found["dirs"].values() for d in dirs)
    entry_points = next(target.glob("salt_lssd-*.dist-info")) / "entry_points.txt"
    assert "[salt.loader]" in entry_points.read_text()


def test_installed_package_prints_the_file_roots_that_hold_the_sls_tree(installed):
    # -S as above: the installed copy answers, not the editable one.
    out = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = ['file_roots']; "
         "import runpy; runpy.run_module('salt_lssd', run_name='__main__')", str(installed)],
        capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    roots = pathlib.Path(out.stdout.strip())
    assert str(roots).startswith(str(installed)), roots
    # salt-run state.orchestrate lssd.orch.deploy finds lssd/orch/deploy.sls below it.
    shipped = sorted(str(p.relative_to(roots)) for p in roots.rglob("*") if p.is_file() and p.suffix != ".pyc")
    in_repo = sorted(str(p.relative_to(pathlib.Path(REPO, "salt"))) for p in pathlib.Path(REPO, "salt").rglob("*")
                     if p.is_file())
    assert "lssd/orch/deploy.sls" in shipped
    assert shipped == in_repo


def test_readme_says_which_file_roots_a_pip_install_needs():
    readme = pathlib.Path(REPO, "README.md").read_text()
    assert "python3 -m salt_lssd file_roots" in readme
    # Runners are documented by doc.runner; sys.doc is for execution modules.
    assert "salt-run doc.runner lssd" in readme and "salt-run sys.doc" not in readme
