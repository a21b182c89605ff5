"""
The lssd ext_pillar: a planned lssd run's torrent and credentials, for that run's minions only.

Enable it on the master (``/etc/salt/master.d/lssd.conf``)::

    ext_pillar:
      - lssd: {}

``salt-run state.orchestrate lssd.orch.deploy`` and ``salt-run lssd.deploy`` refuse to start
without it. A run's roles get, under pillar key ``lssd_run``, what the run's seeder and tracker
published for it; every other minion gets nothing. The check is a lookup by minion id in the
run's record, so a read costs the master the same on a 10-minion and a 10,000-minion fleet
(``salt_lssd.channel``).
"""

import logging
import os
import sys

try:
    import salt_lssd
except ImportError:
    # Classic install (file_roots/gitfs + salt-run saltutil.sync_all): the package arrives in
    # the master's extmods/utils beside this extmods/pillar directory; in the repository it
    # sits in _utils beside _pillar.
    _parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _candidate in (os.path.join(_parent, "utils"), os.path.join(_parent, "_utils")):
        if os.path.isdir(os.path.join(_candidate, "salt_lssd")) and _candidate not in sys.path:
            sys.path.append(_candidate)
    try:
        import salt_lssd
    except ImportError:
        salt_lssd = None

__virtualname__ = "lssd"
_MINE = {}
log = logging.getLogger(__name__)


def __virtual__():
    if salt_lssd is None:
        return (
            False,
            "lssd ext_pillar: the salt_lssd package is missing: run salt-run saltutil.sync_all "
            "(classic install) or pip install salt-lssd into the Python that runs the master",
        )
    return __virtualname__


def _mine_cache(minion):
    import salt.cache  # pylint: disable=import-outside-toplevel

    # One cache object per master worker process: building it loads Salt's cache drivers.
    cache = _MINE.get("cache")
    if cache is None:
        cache = _MINE["cache"] = salt.cache.factory(__opts__)
    return cache.fetch("mine", minion)


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """The run channel's entries for ``minion_id`` (see ``salt_lssd.channel.serve``)."""
    from salt_lssd import channel  # pylint: disable=import-outside-toplevel

    try:
        return channel.serve(__opts__, minion_id, pillar, _mine_cache)
    except Exception as exc:  # pylint: disable=broad-except
        # An error here would fail every pillar render of this master, not only lssd's runs.
        log.error("lssd ext_pillar: nothing served to %s: %s", minion_id, exc)
        return {}
