"""pillar.example documents exactly the settings the SLS tree and the execution module use.

No daemons: this reads files only, so it is not marked integration.
"""

import re

import yaml

from .lssd_integration import REPO

# No default stands in for these: pillar.example shows them commented, defaults.yaml lacks them.
REQUIRED = ["tag", "seeder_files_path", "destination_path", "targets:tracker", "targets:seeder", "targets:peer"]
# Given per run (pillar=), not kept in pillar, and with no default: shown commented too.
# (rollback_to, app and run_id are per run too, but their default, null, is in defaults.yaml.)
PER_RUN = []


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


def test_required_keys_have_no_default_and_are_shown_commented():
    text = (REPO / "pillar.example").read_text()
    defaults = flat_keys(yaml.safe_load((REPO / "salt" / "lssd" / "defaults.yaml").read_text())["lssd"])
    for key in REQUIRED + PER_RUN:
        assert key not in defaults and key.split(":")[0] not in defaults, key
        leaf = key.split(":")[-1]
        assert re.search(rf"^\s*#\s+{leaf}: \S", text, re.M), f"pillar.example does not show {key}"


def test_every_documented_key_is_used_and_every_used_key_documented():
    documented = flat_keys(yaml.safe_load((REPO / "pillar.example").read_text())["lssd"]) | set(REQUIRED + PER_RUN)
    tree = REPO / "salt" / "lssd"
    sls = "\n".join(p.read_text() for p in sorted(tree.rglob("*")) if p.suffix in (".sls", ".jinja"))
    # SLS read the merged settings as lssd.<key>[.<sub>] (or lssd|traverse("<key>:<sub>")).
    used_by_sls = {m.replace(".", ":") for m in re.findall(r"\blssd\.([a-z_]+(?:\.[a-z_]+)?)", sls)}
    used_by_sls |= set(re.findall(r'"((?:targets|tracker):[a-z_]+)"', sls))
    tops = {d.split(":")[0] for d in documented}
    used_by_sls = {k for k in used_by_sls if k.split(":")[0] in tops}
    # lssd.tracker / lssd.targets alone name a group (or an SLS such as lssd.tracker), not a key.
    used_by_sls = {k for k in used_by_sls if not any(d.startswith(k + ":") for d in documented)}
    assert used_by_sls - documented == set(), "used by the SLS tree but not in pillar.example"
    # The execution module and its package name each key it reads as a string.
    code = "\n".join(
        p.read_text()
        for where in ("_modules", "_states", "_utils")
        for p in sorted((REPO / where).rglob("*.py"))
    )
    unused = {
        key
        for key in documented - used_by_sls
        if not re.search(rf"""["'](lssd:)?{re.escape(key)}["']""", code)
    }
    assert unused == set(), "documented but never used"
