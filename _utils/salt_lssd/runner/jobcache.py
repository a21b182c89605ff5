"""Each minion's outcome as the master itself stored it: the master's job cache.

A minion's return reaches the master through the request channel, where Salt checks that the
id in the request is the minion whose key signed and encrypted it, and the master then stores
it under that id in its job cache (``master_job_cache``, ``local_cache`` by default). The
event ``salt/job/<jid>/ret/<id>`` that announces it is different: any accepted minion can fire
an event under any tag that is not on Salt's blacklist (``fire_master``), with any ``id`` in
its data, and ``salt/job/*/ret/*`` is not on it. So the runner and ``lssd.report`` read
outcomes from here only; an event is at most a hint to look.
"""

from salt_lssd import LssdError


class JobCache:
    """The master's job cache through its returner (``get_jid``, ``get_load``, ``get_jids``)."""

    def __init__(self, opts):
        if not opts.get("job_cache", True) or opts.get("ext_job_cache"):
            # Without the master's own cache, returns go elsewhere (or nowhere) and the only
            # record of an outcome left is the event bus, which minions can write to.
            raise LssdError(
                f"lssd needs the master's job cache to read each minion's outcome: job_cache is "
                f"{opts.get('job_cache')!r} and ext_job_cache {opts.get('ext_job_cache')!r} in the "
                f"master config; set job_cache: True and remove ext_job_cache (master_job_cache "
                f"may name any returner)"
            )
        import salt.minion

        self.name = opts.get("master_job_cache") or "local_cache"
        self.returners = salt.minion.MasterMinion(opts, states=False, rend=False, matcher=False).returners
        for function in ("get_jid", "get_load", "get_jids"):
            if f"{self.name}.{function}" not in self.returners:
                raise LssdError(f"master_job_cache {self.name!r} has no {function}: lssd cannot read outcomes from it")

    def returns(self, jid):
        """``{minion: {"return", "retcode", "success"}}`` of the returns stored for ``jid``."""
        found = self.returners[f"{self.name}.get_jid"](str(jid)) or {}
        return {m: r for m, r in found.items() if isinstance(r, dict) and "return" in r}

    def load(self, jid):
        """The job's publication as the master saved it (``fun``, ``arg``, ``Minions`` ...)."""
        return self.returners[f"{self.name}.get_load"](str(jid)) or {}

    def jobs(self):
        """``{jid: {"Function", "Arguments", "Target", "StartTime", ...}}`` of every cached job."""
        return self.returners[f"{self.name}.get_jids"]() or {}
