"""`pip install .` (not editable) must carry the loader directories the entry point names."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_installed_package_points_salt_at_its_modules_states_runners_and_grains(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), REPO],
        check=True,
        capture_output=True,
    )
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
