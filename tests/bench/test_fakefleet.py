"""bench/fakefleet.py: the fakes are what Salt's own key listing, data cache and matcher read."""

import copy
import os
import sys

import salt.cache
import salt.config
import salt.crypt
import salt.key
import salt.utils.minions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import fakefleet  # bench/fakefleet.py


def _master_opts(tmp_path):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(
        root_dir=str(tmp_path),
        pki_dir=str(tmp_path / "pki"),
        cachedir=str(tmp_path / "cache"),
        sock_dir=str(tmp_path / "run"),
        id="fakefleet-test_master",
        __role="master",
    )
    return opts


def test_hundred_fakes_are_accepted_minions_with_cached_grains_and_go_away(tmp_path):
    opts = _master_opts(tmp_path)
    priv, pub = salt.crypt.gen_keys(2048)
    os.makedirs(os.path.join(opts["pki_dir"], "minions"))
    with open(os.path.join(opts["pki_dir"], "minions", "real1"), "w") as fh:
        fh.write(pub)

    config = {"pki_dir": opts["pki_dir"], "cachedir": opts["cachedir"], "id": "ignored"}
    ids = fakefleet.add_to_master(config, 100, grains={"os": "Debian", "role": "overwritten"})
    assert len(ids) == 100 and len(set(ids)) == 100
    assert all(i.startswith(fakefleet.PREFIX) for i in ids)

    # The key files: accepted keys, each the real minion's public key.
    accepted = salt.key.get_key(opts).list_status("accepted")["minions"]
    assert set(accepted) == set(ids) | {"real1"}
    key_cache = salt.cache.Cache(opts, driver=opts["keys.cache_driver"])
    assert key_cache.fetch("keys", ids[7]) == {"state": "accepted", "pub": pub}

    # The data cache the master's matchers read: grains per id, half with role web.
    cache = salt.cache.Cache(opts)
    assert set(cache.list("grains")) == set(ids)
    grains = cache.fetch("grains", ids[0])
    assert grains["id"] == ids[0] and grains["os"] == "Debian" and grains["role"] == "web"
    assert cache.fetch("grains", ids[1])["role"] == "db"
    assert cache.fetch("pillar", ids[3]) == {}

    # What lssd's allow_tgt asks of Salt's matcher: a grain and a list.
    checker = salt.utils.minions.CkMinions(opts)
    web = checker.check_minions("( G@role:web ) or ( L@real1 )", "compound")["minions"]
    assert set(web) == {i for n, i in enumerate(ids) if n % 2 == 0} | {"real1"}

    assert fakefleet.remove_from_master(config) == 100
    assert salt.key.get_key(opts).list_status("accepted")["minions"] == ["real1"]
    assert cache.list("grains") == []
    assert os.listdir(os.path.join(opts["pki_dir"], "minions")) == ["real1"]
