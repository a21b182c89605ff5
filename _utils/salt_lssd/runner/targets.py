"""A run's compound targets resolved to minion ids, all in one pass over the master's data.

Salt's ``CkMinions`` answers one expression at a time, and each answer lists every accepted key
and, for a grain (``G@``) or pillar word, reads every minion's cached data again: a run with a
tracker, a seeder, peers and a canary paid that scan four times, on every render. Here one
``CkMinions`` answers them all with Salt's own matching, over a cache that lists each bank and
reads each minion's entry at most once per run.
"""

import copy


class _ReadOnce:
    """The master's minion cache, each listing and each entry read at most once."""

    def __init__(self, cache):
        self._cache = cache
        self._lists = {}
        self._entries = {}

    def list(self, bank):
        if bank not in self._lists:
            self._lists[bank] = list(self._cache.list(bank) or [])
        return list(self._lists[bank])

    def fetch(self, bank, key):
        if (bank, key) not in self._entries:
            self._entries[(bank, key)] = self._cache.fetch(bank, key)
        return self._entries[(bank, key)]

    def __getattr__(self, name):
        return getattr(self._cache, name)


def _once(function):
    """``function()`` called once; later calls get a copy of its first answer."""
    answer = []

    def called():
        if not answer:
            answer.append(function())
        return copy.deepcopy(answer[0])

    return called


def resolver(opts):
    """``resolve(expr)``: the sorted ids of the accepted minions that compound ``expr`` matches."""
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    checker = salt.utils.minions.CkMinions(opts)
    checker.cache = _ReadOnce(checker.cache)
    # Salt lists the accepted keys again for every glob or list word, checking each key file's
    # path (clean_path): the costliest part of a target at fleet size. Once per run is enough.
    for name in ("list_keys", "all_keys"):
        setattr(checker.key, name, _once(getattr(checker.key, name)))

    def resolve(expr):
        return sorted(checker.check_minions(expr, "compound").get("minions") or [])

    return resolve
