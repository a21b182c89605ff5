"""``salt-run lssd.deploy``: the pipeline of ``lssd.orch.deploy``, driven as Salt jobs.

1. the tracker starts on ``targets:tracker`` (``lssd.tracker_running``);
2. the seeder packs, seeds and publishes the tag for this run (``lssd.seeding``);
3. the tracker registers the torrent (``lssd.tracker_allow``, waiting for it);
4. the canary peers, if any, deploy first (``lssd.deployed``); the rest only if they all
   succeeded, ``batch`` at a time;
5. seeding and the tracker stop, whatever happened before.

Steps 1 to 3 start together, the peers once they all succeeded; a failed tracker or seeder
ends the registration's wait for the torrent (``lssd.abort_run``).

Every step is an ``lssd`` state given as data (``state.high``) or an ``lssd.*`` function,
never an SLS file, so a ``pip`` install with no file_roots runs it as well as the classic one.
(``state.single`` would be the obvious call, but it hands ``pillar=`` on to the state function,
which refuses it.) Roles get only the run-wide
pillar (tag, app, tracker address, run id); the rest each minion reads from its own pillar.
The ``lssd.*`` functions get no pillar, so they are handed the app as ``app=``.
"""

import time

from salt_lssd import channel
from salt_lssd.runner import plan as run_plan
from salt_lssd.runner import table
from salt_lssd.runner.display import Display, mode_for
from salt_lssd.runner.jobs import Bus, succeeded
from salt_lssd.runner.settings import master_pillar
from salt_lssd.runner.view import SwarmView

SEEDER_POLL = 5.0
DOWN = "down: did not answer test.ping before the run (lssd:unreachable skip); not deployed"


def deploy(opts, display=None, pillar=None, **overrides):
    """Run one deploy; the return data has the per-minion rows and ``retcode`` 1 on failure."""
    plan = run_plan.make(opts, (master_pillar(opts, pillar) or {}).get("lssd") or {}, overrides)
    bus = Bus(opts)
    try:
        return Deploy(bus, display or Display(mode_for(opts)), plan).execute()
    finally:
        bus.close()
        channel.forget(opts, plan["run_id"])


class Deploy:
    def __init__(self, bus, display, plan):
        self.bus = bus
        self.display = display
        self.plan = plan
        self.tag = plan["tag"]
        self.app = plan["app"]
        self.app_kwarg = {"app": self.app} if self.app else {}
        self.pillar = {"pillar": plan["run_pillar"]}
        self.job_timeout = plan["job_timeout"]
        self.view = SwarmView(self.tag)
        self.rows = {}
        self.out = {"tag": self.tag, "result": True, "phases": {}, "minions": self.rows, "jids": {},
                    "run_id": plan["run_id"]}
        self._seeder_poll = None
        self._aborted = False
        self.seeders = []

    def execute(self):
        targets = self.plan["roles"]
        for minion in self.plan["down"]:
            self.rows[minion] = table.row(minion, False, DOWN)
        self.seeders = targets["seeder"]
        self.display.phase("deploy", f"tag {self.tag}: tracker {', '.join(targets['tracker'])}, "
                                     f"seeder {', '.join(targets['seeder'])}, {len(targets['peer'])} peers")
        try:
            # As lssd.orch.deploy: tracker, seeder and the registration (waiting for the torrent
            # the seeder publishes for this run, lssd:run_id) together; the peers after them.
            run_id = self.plan["run_id"]
            control = [
                self._control("tracker", targets, targets["tracker"], "state.high",
                              [high("tracker_running", "lssd-tracker")], dict(self.pillar, concurrent=True)),
                self._control("seeder", targets, targets["seeder"], "state.high",
                              [high("seeding", self.tag)], dict(self.pillar, concurrent=True)),
                self._control("allow", targets, targets["tracker"], "lssd.tracker_allow", [self.tag],
                              dict(self.app_kwarg, run_id=run_id, wait=self.job_timeout),
                              timeout=2 * self.job_timeout),
            ]
            self.bus.wait(control)
            if all(self.out["phases"][name]["result"] for name in ("tracker", "seeder", "allow")):
                self._peers(targets)
        finally:
            self._stop(targets)
        return self._finish()

    def _control(self, name, targets, minions, fun, arg, kwarg, timeout=None):
        """Start one control step on ``minions``; it is recorded once every minion returned,
        and a failed tracker or seeder aborts the registration waiting for its torrent."""
        def returned(minion, data):
            if job.waiting:
                return
            if not self._record(name, minions, job.returns) and name in ("tracker", "seeder"):
                self._abort(targets, name)

        job = self.bus.publish(minions, fun, arg, kwarg, timeout or self.job_timeout, on_return=returned)
        self.out["jids"][name] = job.jid
        return job

    def _record(self, name, minions, returns):
        """Record a control step's returns and say how it went; True if it succeeded everywhere."""
        outcome = {m: succeeded(returns[m]) for m in minions}
        failed = {m: reason for m, (ok, reason) in outcome.items() if not ok}
        self.out["phases"][name] = {"result": not failed, "minions": sorted(minions), "failed": failed}
        if failed:
            self.out["result"] = False
            for minion, reason in failed.items():
                self.display.phase(name, f"FAILED on {minion}: {reason}")
        else:
            self.display.phase(name, f"ok on {', '.join(minions)}: {_comment(returns[minions[0]])}")
        return not failed

    def _abort(self, targets, name):
        """Tell the run's tracker (waiting for the torrent) and seeder (waiting for the
        tracker's address) that it will not come (``lssd.abort_run``)."""
        if self._aborted:
            return
        self._aborted = True
        reason = f"the {name} of this run failed on {', '.join(self.out['phases'][name]['failed'])}"
        self.bus.publish(sorted(set(targets["tracker"]) | set(self.seeders)), "lssd.abort_run", [self.plan["run_id"]],
                         {"reason": reason}, timeout=self.job_timeout)

    def _stop(self, targets):
        jobs = [self.bus.publish(targets["seeder"], "lssd.seed_stop", [self.tag], self.app_kwarg or None,
                                 timeout=self.job_timeout),
                self.bus.publish(targets["tracker"], "lssd.tracker_stop", timeout=self.job_timeout)]
        self.bus.wait(jobs)
        failed = {m: reason for job in jobs for m, (ok, reason) in
                  ((m, succeeded(r)) for m, r in job.returns.items()) if not ok}
        self.out["phases"]["stop"] = {"result": not failed, "failed": failed}
        self.display.phase("stop", "seeder and tracker stopped" if not failed else f"FAILED: {failed}")

    def _peers(self, targets):
        peers = targets["peer"]
        self.view.add(peers)
        waves = self.plan["waves"]
        canary = waves[0]["minions"] if waves[0]["name"] == "canary" else []
        self.display.phase("peers", f"{len(peers)} peers" + (f", canary first: {', '.join(canary)}" if canary else "")
                           + (f", batch {self.plan['batch']}" if self.plan["batch"] else ""))
        self.bus.listeners.append(self.view.on_event)
        self.bus.ticks.append(self._tick)
        try:
            for number, wave in enumerate(waves):
                if not self._wave(wave) and canary and number == 0:
                    for minion in (m for later in waves[1:] for m in later["minions"]):
                        self.view.skipped(minion)
                        self.rows[minion] = table.skipped(minion, "not deployed: a canary failed")
                    break
        finally:
            self.bus.ticks.remove(self._tick)
            self.display.end_swarm(self.view)

    def _wave(self, wave):
        """Deploy the ``wave``'s minions, ``batch`` of them at a time (a sliding window, as
        Salt's batch)."""
        minions = wave["minions"]
        size = run_plan.wave_size(self.plan, wave)
        queue, jobs = list(minions), []
        timeout = self.plan["peer_timeout"]
        # A number, not True: Salt 3008 defers a queue=True run and returns at once; a number
        # keeps a peer that is also the tracker or seeder waiting behind their state runs.
        kwarg = dict(self.pillar, queue=100)

        def running():
            return sum(len(job.waiting) for job in jobs)

        while queue or running():
            if queue and running() < size:
                take = size - running()
                jobs.append(self.bus.publish(queue[:take], "state.high", [high("deployed", self.tag)],
                                             kwarg, timeout, on_return=self._peer_returned))
                self.out["jids"].setdefault("peers", []).append(jobs[-1].jid)
                del queue[:take]
            self.bus.wait([j for j in jobs if j.waiting], until=lambda: queue and running() < size)
        return all(self.rows[m]["result"] != "failed" for m in minions)

    def _peer_returned(self, minion, data):
        """The row of a peer from its job-cached return alone; its events (which any minion
        can forge) only add context to a return that never came."""
        ok, reason = succeeded(data)
        peer = self.view.peers.get(minion)
        if not ok and peer is not None and peer.reason and data.get("missing"):
            reason = f"{reason}; last event: {peer.reason}"
        self.view.finished(minion, ok, reason)
        self.rows[minion] = table.from_return(minion, ok, reason, data)
        self.display.swarm(self.view, force=True)

    def _tick(self):
        self.display.swarm(self.view)
        job = self._seeder_poll
        # One question at a time: a seeder slow to answer is not asked again meanwhile.
        if job is None or (not job.waiting and time.monotonic() - job.started >= SEEDER_POLL):
            self._seeder_poll = self.bus.publish(self.seeders, "lssd.status", timeout=30,
                                                 on_return=self._seeder_status)

    def _seeder_status(self, minion, data):
        processes = (data.get("return") or {}).get("processes") if isinstance(data.get("return"), dict) else None
        for process in processes or []:
            if process.get("role") == "seeder" and process.get("tag") == self.tag and process.get("app") == self.app:
                self.view.seeder_upload = process.get("upload_rate") or 0

    def _finish(self):
        failed = {m: row["reason"] for m, row in self.rows.items() if row["result"] == "failed"}
        failed.update({f"{m} ({phase})": reason for phase, body in self.out["phases"].items()
                       for m, reason in body.get("failed", {}).items()})
        skipped = sorted(m for m, row in self.rows.items() if row["result"] == "skipped")
        self.out["failed"] = failed
        self.out["skipped"] = skipped
        self.out["result"] = self.out["result"] and not failed and not skipped
        self.out["retcode"] = 0 if self.out["result"] else 1
        if self.rows:
            self.display.lines([""] + table.render(self.rows, width=self.display.width) + [""])
        self.display.phase("result", f"{self.tag}: " + ("every peer deployed" if self.out["result"] else
                           f"FAILED on {len(failed)}: " + _failures(failed)
                           + (f"; {len(skipped)} skipped (not deployed)" if skipped else "")))
        done = [m for m, row in self.rows.items() if row["result"] == "ok"]
        if done:
            # salt -G 'lssd_current:<tag>' matches on the master's cache of the grains, which a
            # minion updates with its pillar refresh, after it reloaded its grains.
            self.bus.publish(done, "saltutil.refresh_grains", timeout=30)
        return self.out


def _failures(failed):
    """Who failed and why, in one line: the reasons too when they fit."""
    if len(failed) <= 2:
        return "; ".join(f"{m}: {r}" for m, r in sorted(failed.items()))
    return ", ".join(sorted(failed)) + " (reasons in the table and in 'failed')"


def high(state, name):
    """High data of one ``lssd.<state>`` named ``name``, for ``state.high``."""
    return {name: {"lssd": [state, {"name": name}], "__sls__": "lssd.runner", "__env__": "base"}}


def _comment(ret):
    value = ret.get("return")
    if isinstance(value, dict):
        states = [s for s in value.values() if isinstance(s, dict) and "comment" in s]
        if states:
            return str(states[0]["comment"]).splitlines()[0]
        return str(value.get("comment") or "done")
    return str(value)

