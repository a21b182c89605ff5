"""settings.py: one default and one check per setting, and the SLS defaults pinned to them."""

import pathlib

import pytest
import yaml
from salt_lssd import LssdError, settings

REPO = pathlib.Path(__file__).resolve().parents[2]


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "libtorrent_settings":
            out.update(flatten(value, name + ":"))
        else:
            out[name] = value
    return out


def test_sls_defaults_are_the_table_defaults():
    defaults = flatten(yaml.safe_load((REPO / "salt" / "lssd" / "defaults.yaml").read_text())["lssd"])
    for name, value in defaults.items():
        assert name in settings.TABLE, f"defaults.yaml sets {name}, which the settings table lacks"
        assert value == settings.default(name), name
    required = {n for n in settings.TABLE if settings.default(n) is settings.REQUIRED}
    assert required == {"tag", "seeder_files_path", "destination_path",
                        "targets:tracker", "targets:seeder", "targets:peer"}
    assert not required & set(defaults), "a required key must have no default"
    assert set(settings.TABLE) - required <= set(defaults), "every optional key has its SLS default"


def test_pillar_example_documents_every_setting():
    text = (REPO / "pillar.example").read_text()
    for name in settings.TABLE:
        assert f"{name.rpartition(':')[2]}:" in text, f"pillar.example does not mention {name}"


def lookup(values):
    return settings.Settings(lambda key: values.get(key)).get


def test_argument_beats_pillar_beats_default():
    get = lookup({"lssd:linger": "7"})
    assert get("linger") == 7 and get("linger", 2) == 2 and get("timeout") == 3600


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("tag", 1.1, r"lssd:tag 1.1 is a number: YAML reads an unquoted tag such as 1.10 .* quote it"),
        ("tag", "a/b", r"tag 'a/b' may not contain '/'"),
        ("tracker:host", "tracker01:8998", r"lssd:tracker:host 'tracker01:8998' holds a port"),
        ("tracker:port", 70000, r"lssd:tracker:port 70000 is not a TCP port; allowed: 1-65535"),
        ("linger", "soon", r"lssd:linger 'soon' is not a number"),
        ("destination_path", "relative/dir", r"lssd:destination_path 'relative/dir' must be an absolute path"),
        ("keep", 0, r"keep 0 is below 1"),
        ("current", "a/b", r"current 'a/b' must be a plain file name"),
        ("compression", "lzma", r"compression 'lzma' is unknown; allowed: none, gzip, zstd"),
        ("listen", "6881", r"lssd:listen '6881' must be '<address>:<port>'"),
        ("no_tag_directory", "maybe", r"lssd:no_tag_directory 'maybe' is not a boolean"),
        ("hooks:sls", {"a": 1}, r"lssd:hooks:sls .* must be a list of SLS names"),
    ],
)
def test_bad_values_are_refused_naming_the_key(name, value, message):
    with pytest.raises(LssdError, match=message):
        lookup({f"lssd:{name}": value})(name)


def test_a_required_key_without_value_names_the_key():
    with pytest.raises(LssdError, match=r"lssd:targets:peer is not set"):
        lookup({})("targets:peer")
    assert lookup({})("current") is None and lookup({"lssd:current": True})("current") == "current"


def test_the_documented_keys_are_all_known_and_a_misspelling_is_found():
    example = yaml.safe_load((REPO / "pillar.example").read_text())["lssd"]
    defaults = yaml.safe_load((REPO / "salt" / "lssd" / "defaults.yaml").read_text())["lssd"]
    assert settings.unknown_keys(example) == [] and settings.unknown_keys(defaults) == []
    found = settings.unknown_keys({"destinaton_path": "/x", "tracker": {"prot": 1}, "team": "ops"})
    assert found == [("lssd:destinaton_path", "lssd:destination_path"), ("lssd:team", None),
                     ("lssd:tracker:prot", "lssd:tracker:port")]
