"""pillar.example documents exactly the settings the SLS tree and the execution module use.

No daemons: this reads files only, so it is not marked integration.
"""

import re

import yaml

from .lssd_integration import REPO


def flat_keys(data, prefix=""):
    keys = set()
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict) and value:  # an empty mapping is a setting (libtorrent_settings)
            keys |= flat_keys(value, name + ":")
        else:
            keys.add(name)
    return keys


def test_pillar_example_is_the_defaults():
    example = yaml.safe_load((REPO / "pillar.example").read_text())
    defaults = yaml.safe_load((REPO / "salt" / "lssd" / "defaults.yaml").read_text())
    assert example == defaults


def test_every_documented_key_is_used_and_every_used_key_documented():
    documented = flat_keys(yaml.safe_load((REPO / "pillar.example").read_text())["lssd"])
    sls = "\n".join(p.read_text() for p in (REPO / "salt" / "lssd").rglob("*.sls"))
    module = (REPO / "_modules" / "lssd.py").read_text()
    # SLS read the merged settings as lssd.<key>[.<sub>]; the module as _conf("<key>[:<sub>]").
    used_by_sls = {m.replace(".", ":") for m in re.findall(r"\blssd\.([a-z_]+(?:\.[a-z_]+)?)", sls)}
    used_by_sls = {k for k in used_by_sls if k.split(":")[0] in {d.split(":")[0] for d in documented}}
    used_by_module = set(re.findall(r'_conf\("([a-z_:]+)"', module))
    # targets:* are used as a whole by the orchestrate (lssd.targets -> targets.<role>).
    orch = "\n".join(p.read_text() for p in (REPO / "salt" / "lssd" / "orch").glob("*.sls"))
    used_by_orch = {"targets:" + role for role in re.findall(r"\btargets\.([a-z_]+)", orch)}
    used = used_by_sls | used_by_module | used_by_orch
    # lssd.tracker / lssd.targets alone name a group (or an SLS such as lssd.tracker), not a key.
    used = {k for k in used if not any(d.startswith(k + ":") for d in documented)}
    assert documented - used == set(), "documented but never used"
    assert used - documented == set(), "used but not in pillar.example"
