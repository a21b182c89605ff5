"""Salt jobs from the runner: publish, then collect returns and ``lssd/...`` events in one loop.

Every job is published with ``LocalClient.run_job``. Its returns are read from the master's job
cache (jobcache.py), never from the event bus: any accepted minion can fire
``salt/job/<jid>/ret/<another minion>`` with a made-up return. A return event on the bus (the
same subscription that carries the minions' ``lssd/peer/<tag>/...`` events, so the live
display keeps moving while a step runs) only says when to look in the cache, and every
``CACHE_POLL`` seconds the cache is read for every minion still awaited, so a forged event can
delay a result by at most a poll, and a lost one costs no more. A step has an explicit
timeout. A minion that is slow is waited for, not reported missing: every
``PROBE_EVERY`` seconds the minions that have not returned are asked ``saltutil.find_job``
(again a published job read from the bus); one that twice says the job no longer runs, and
still has not returned, failed, and is named with that reason.
"""

import time

from salt_lssd.runner.jobcache import JobCache

PROBE_EVERY = 20.0
CACHE_POLL = 2.0
# How long a return event is followed up in the cache before only the poll looks again: the
# master fires the event just before it writes the cache; a forged one is never confirmed.
CLAIM_TTL = 10.0
# State results are keyed "<module>_|-<id>_|-<name>_|-<function>": how a state return is told
# from a function's dict.
_STATE_KEY_SEP = "_|-"


def succeeded(ret):
    """(ok, reason) of one minion's cached return of an execution or state function."""
    value = ret.get("return")
    if ret.get("retcode", 0) not in (0, None) or ret.get("success") is False:
        return False, _reason(value)
    if isinstance(value, dict) and value and all(_STATE_KEY_SEP in k for k in value):
        for state in value.values():
            if isinstance(state, dict) and state.get("result") is False:
                return False, _reason(state.get("comment"))
    return True, ""


def _reason(value):
    if isinstance(value, dict):
        failed = [s for s in value.values() if isinstance(s, dict) and s.get("result") is False]
        value = failed[0].get("comment") if failed else value
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    text = str(value or "failed without a message").strip()
    return text[len("ERROR: "):] if text.startswith("ERROR: ") else text


class Job:
    """One published job: its minions, what each returned, and when it gives up."""

    def __init__(self, jid, minions, timeout, on_return=None):
        self.jid = jid
        self.started = time.monotonic()
        self.waiting = set(minions)
        self.returns = {}
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.on_return = on_return
        self.gone = {}  # minion -> times find_job said the job no longer runs


class Bus:
    """The runner's LocalClient and its subscription to the master's event bus."""

    def __init__(self, opts):
        import salt.client
        import salt.utils.event

        self.opts = opts
        self.client = salt.client.LocalClient(mopts=opts)
        self.cache = JobCache(opts)
        self.events = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
        self.listeners = []  # callables (tag, data) for every lssd/... event
        self.ticks = []  # callables () run at least twice a second while waiting
        self.jobs = {}
        self._probes = {}  # find_job jid -> the Job it asks about
        self._claims = {}  # jid -> {minion: when an event said it returned}
        self._answered = set()  # (probe jid, minion) already taken from the cache
        self._next_poll = time.monotonic() + CACHE_POLL

    def close(self):
        self.events.destroy()
        self.client.destroy()

    def minions(self, tgt):
        """Sorted ids of the accepted minions a compound target matches (the master's cache)."""
        import salt.utils.minions

        found = salt.utils.minions.CkMinions(self.opts).check_minions(tgt, "compound")
        return sorted(found.get("minions") or [])

    def publish(self, minions, fun, arg=(), kwarg=None, timeout=600, on_return=None):
        """Publish ``fun`` to the ``minions`` (a list of ids); returns the Job, not waiting."""
        pub = self.client.run_job(
            list(minions), fun, arg=list(arg), tgt_type="list", timeout=timeout, kwarg=kwarg or {}
        )
        if not pub or not pub.get("jid"):
            raise RuntimeError(f"the master did not publish {fun} to {', '.join(minions)}: {pub!r}")
        job = Job(pub["jid"], minions, timeout, on_return)
        self.jobs[job.jid] = job
        return job

    def run(self, minions, fun, arg=(), kwarg=None, timeout=600):
        """Publish and wait: ``{minion: cached return}`` (missing minions with a reason)."""
        job = self.publish(minions, fun, arg, kwarg, timeout)
        self.wait([job])
        return job.returns

    def wait(self, jobs, until=None):
        """Pump events until every job in ``jobs`` is complete (or ``until()`` is true)."""
        next_probe = time.monotonic() + PROBE_EVERY
        while any(job.waiting for job in jobs) and not (until and until()):
            self.pump()
            now = time.monotonic()
            for job in jobs:
                if job.waiting and now >= job.deadline:
                    for minion in sorted(job.waiting):
                        self._give_up(job, minion, f"no return within {job.timeout:g} s (job {job.jid})")
            if now >= next_probe:
                self._probe([job for job in jobs if job.waiting])
                next_probe = now + PROBE_EVERY

    def pump(self, wait=0.25):
        """Handle at most the events of one short wait, then run the ticks."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            event = self.events.get_event(wait=max(left, 0.01), full=True, auto_reconnect=True)
            if event:
                self._dispatch(event.get("tag", ""), event.get("data") or {})
            if left <= 0 or not event:
                break
        self._confirm()
        for tick in self.ticks:
            tick()

    def _dispatch(self, tag, data):
        if tag.startswith("lssd/"):
            for listener in self.listeners:
                listener(tag, data.get("data", data) if isinstance(data.get("data"), dict) else data, data.get("id"))
            return
        parts = tag.split("/")
        if len(parts) == 5 and parts[:2] == ["salt", "job"] and parts[3] == "ret":
            jid, minion = parts[2], parts[4]
            # Not the return itself (the event's data is whatever its sender chose): a hint
            # that the job cache may now hold one.
            if jid in self._probes or (jid in self.jobs and minion in self.jobs[jid].waiting):
                self._claims.setdefault(jid, {}).setdefault(minion, time.monotonic())

    def _confirm(self):
        """Take from the job cache the returns that events announced, and every
        ``CACHE_POLL`` seconds those of every awaited minion."""
        now = time.monotonic()
        jids = set(self._claims)
        if now >= self._next_poll:
            self._next_poll = now + CACHE_POLL
            jids |= {jid for jid, job in self.jobs.items() if job.waiting}
        for jid in sorted(jids):
            cached = self.cache.returns(jid)
            for minion, ret in cached.items():
                self._cached_return(jid, minion, dict(ret, id=minion, jid=jid))
            claims = self._claims.pop(jid, {})
            left = {m: t for m, t in claims.items() if m not in cached and now - t < CLAIM_TTL}
            if left:
                self._claims[jid] = left

    def _cached_return(self, jid, minion, ret):
        if jid in self._probes:
            if (jid, minion) not in self._answered:
                self._answered.add((jid, minion))
                self._probe_answer(self._probes[jid], minion, ret.get("return"))
        elif jid in self.jobs and minion in self.jobs[jid].waiting:
            self._returned(self.jobs[jid], minion, ret)

    def _returned(self, job, minion, data):
        job.waiting.discard(minion)
        job.returns[minion] = data
        if job.on_return:
            job.on_return(minion, data)

    def _give_up(self, job, minion, reason):
        self._returned(job, minion, {"id": minion, "return": reason, "retcode": 1, "success": False, "missing": True})

    def _probe(self, jobs):
        for job in jobs:
            try:
                probe = self.client.run_job(sorted(job.waiting), "saltutil.find_job", arg=[job.jid],
                                            tgt_type="list", timeout=10)
            except Exception:  # pylint: disable=broad-except
                continue  # a busy master: ask again next round
            if probe and probe.get("jid"):
                self._probes[probe["jid"]] = job

    def _probe_answer(self, job, minion, answer):
        if minion not in job.waiting:
            return
        if answer:  # the job still runs there
            job.gone.pop(minion, None)
            return
        job.gone[minion] = job.gone.get(minion, 0) + 1
        # Twice, a probe round apart: a return already on its way has arrived by then.
        if job.gone[minion] >= 2:
            self._give_up(job, minion, f"the job ({job.jid}) ended on {minion} without a return")
