"""A fake fleet on a Salt master: N accepted minions as a big fleet leaves them on disk.

A master knows its minions through two things a fleet leaves behind, and this module writes
both, in the layouts Salt 3008 reads (``keys.cache_driver: localfs_key`` and the master's
``localfs`` data cache, the defaults):

- the accepted key: ``<pki_dir>/minions/<id>``, the minion's RSA public key (PEM);
- the cached grains: ``<cachedir>/grains/<id>.p`` (``salt.payload``), what ``G@`` matching,
  ``cache.grains`` and the mine's ``allow_tgt`` read; and the cached pillar
  ``<cachedir>/pillar/<id>.p``, what ``I@`` matching reads.

Every fake key is a copy of one real minion's public key, so whoever holds that minion's private
key can authenticate to the master as any fake id (``bench/fleet.py`` replays a fleet's requests
that way). Half the fakes (even numbers) carry the grain ``role: web``, the rest ``role: db``.

Writing is plain file I/O, no Salt API per id: 30,000 fakes take a few seconds. The ids share a
prefix that no real minion of the bench or the tests uses, so :func:`remove` takes exactly what
:func:`add` wrote. Used by ``bench/fleet.py`` and by integration tests (:func:`add_to_master` with
a pytest-salt-factories master's config dict); it needs ``salt`` and nothing from ``tests/``.
"""

import os

import salt.payload

PREFIX = "fakefleet-"

# What a minion's grains hold when no real minion's are at hand: the keys targeting and
# reporting use, about the size of a small real grains dict.
DEFAULT_GRAINS = {
    "os": "Debian", "os_family": "Debian", "osfinger": "Debian-12", "osrelease": "12",
    "kernel": "Linux", "kernelrelease": "6.1.0-13-amd64", "cpuarch": "x86_64",
    "num_cpus": 8, "mem_total": 31900, "virtual": "kvm", "init": "systemd",
    "saltversion": "3008.4", "pythonversion": [3, 11, 2, "final", 0],
    "ipv4": ["127.0.0.1"], "ipv6": ["::1"], "locale_info": {"defaultencoding": "utf-8"},
    "path": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


def fake_id(index, prefix=PREFIX):
    """The id of fake number ``index`` (zero-padded so ids sort as their numbers)."""
    return f"{prefix}{index:06d}"


def role(index):
    return "web" if index % 2 == 0 else "db"


def grains_for(minion_id, index, template=None):
    """Fake ``index``'s grains: ``template`` (a real minion's grains, or a small default) with the
    fields that name a host replaced, and ``role``."""
    grains = dict(template if template is not None else DEFAULT_GRAINS)
    grains.update(id=minion_id, fqdn=minion_id, host=minion_id, nodename=minion_id,
                  localhost=minion_id, role=role(index))
    return grains


def _write(path, data):
    # Plain writes: fakes are written while nothing reads them (between measurements), and a
    # temporary file and rename per file would double the time at 30,000.
    with open(path, "wb") as fh:
        fh.write(data)


def add(pki_dir, cachedir, count, pub, start=0, grains=None, pillar=None, prefix=PREFIX):
    """Write fakes ``start`` .. ``start + count - 1`` and return their ids.

    ``pub``: the PEM text of a real minion's public key (or a path to it), copied as every
    fake's accepted key. ``grains``: the template of every fake's grains (see
    :func:`grains_for`); ``pillar``: every fake's cached pillar (default: empty, as a minion
    whose pillar the master has not cached yet leaves it)."""
    if os.path.exists(str(pub)) and not str(pub).lstrip().startswith("-----"):
        with open(pub) as fh:
            pub = fh.read()
    pub_bytes = pub.encode() if isinstance(pub, str) else pub
    keys = os.path.join(pki_dir, "minions")
    grains_dir = os.path.join(cachedir, "grains")
    pillar_dir = os.path.join(cachedir, "pillar")
    for path in (keys, grains_dir, pillar_dir):
        os.makedirs(path, exist_ok=True)
    pillar_bytes = salt.payload.dumps(pillar or {})
    ids = []
    for index in range(start, start + count):
        minion_id = fake_id(index, prefix)
        _write(os.path.join(keys, minion_id), pub_bytes)
        _write(os.path.join(grains_dir, f"{minion_id}.p"),
                      salt.payload.dumps(grains_for(minion_id, index, grains)))
        _write(os.path.join(pillar_dir, f"{minion_id}.p"), pillar_bytes)
        ids.append(minion_id)
    return ids


def existing(pki_dir, prefix=PREFIX):
    """The fake ids the master holds an accepted key for, sorted."""
    keys = os.path.join(pki_dir, "minions")
    if not os.path.isdir(keys):
        return []
    return sorted(name for name in os.listdir(keys) if name.startswith(prefix))


def remove(pki_dir, cachedir, prefix=PREFIX):
    """Remove every fake (key, cached grains and pillar, and what the master cached for them
    since: mine, session key) and return how many there were."""
    ids = existing(pki_dir, prefix)
    for minion_id in ids:
        for path in (os.path.join(pki_dir, "minions", minion_id),
                     os.path.join(cachedir, "grains", f"{minion_id}.p"),
                     os.path.join(cachedir, "pillar", f"{minion_id}.p"),
                     os.path.join(cachedir, "mine", f"{minion_id}.p"),
                     os.path.join(cachedir, "sessions", minion_id)):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return len(ids)


def real_pub(pki_dir, prefix=PREFIX):
    """The public key of a real accepted minion (the first by id that is not a fake)."""
    keys = os.path.join(pki_dir, "minions")
    for name in sorted(os.listdir(keys)):
        if not name.startswith(prefix) and not name.startswith("."):
            with open(os.path.join(keys, name)) as fh:
                return fh.read()
    raise LookupError(f"no real accepted minion key in {keys} to copy")


def add_to_master(config, count, pub=None, grains=None, start=0):
    """Add ``count`` fakes to the master whose config dict is ``config`` (what
    pytest-salt-factories' ``salt_master.config`` holds: ``pki_dir``, ``cachedir``). ``pub``
    defaults to the first real accepted minion's key, so accept a real minion first. Returns the
    ids; :func:`remove_from_master` takes them away."""
    pki_dir, cachedir = config["pki_dir"], config["cachedir"]
    return add(pki_dir, cachedir, count, pub or real_pub(pki_dir), start=start, grains=grains)


def remove_from_master(config):
    return remove(config["pki_dir"], config["cachedir"])
