"""``salt-run lssd.report`` and the orchestrate's last step: a deploy's per-peer outcome, from
the returns the master stored in its job cache (jobcache.py), never from events.

A deploy is found by its run id (``lssd:run_id``), which every peer job carries in its pillar:
the runner's peer jobs are ``state.high`` of ``lssd.deployed <tag>``, the orchestrate's are
``state.sls lssd.peer``; canary and batches make several jobs of one run. ``jid`` may name a
peer job, a ``salt-run lssd.deploy`` run or a ``state.orchestrate`` run; ``tag`` picks the
newest run of that tag. Each peer a job targeted (the master's own list of the job's minions)
is ``ok`` only if its cached return says so; a peer whose return is missing has failed.
"""

import re
import time

from salt_lssd import LssdError
from salt_lssd.common import validate_tag
from salt_lssd.runner import table
from salt_lssd.runner.jobcache import JobCache
from salt_lssd.runner.jobs import succeeded

RUNNER_DEPLOY = "runner.lssd.deploy"
VERIFY_POLL = 1.0
# lssd.orch.deploy's first step is named after the run: "lssd run <run id> of <tag>".
_ORCH_RUN = re.compile(r"lssd run (\S+) of ")


def report(opts, jid=None, tag=None, width=None):
    """The per-peer rows of one deploy, its failures and the table (lines)."""
    if (jid is None) == (tag is None):
        raise LssdError("lssd.report needs exactly one of jid= (a deploy's job id) or tag= (its newest deploy)")
    cache = JobCache(opts)
    jobs = cache.jobs()
    run_id = _run_of_jid(cache, jobs, str(jid)) if jid is not None else _newest_run(jobs, validate_tag(tag))
    if run_id is None:
        raise LssdError(f"job {jid} is no lssd deploy the job cache knows (see salt-run jobs.list_jobs)"
                        if jid is not None else
                        f"the job cache holds no deploy of tag {tag!r} (see salt-run jobs.list_jobs)")
    return outcome(cache, jobs, run_id, width)


def verify(opts, run_id, wait=0, width=None):
    """``lssd.verify``: the outcome of run ``run_id``; ``result`` False when a peer's cached
    return is a failure or missing. Returns still missing are waited for up to ``wait``
    seconds: a step that took a forged return may end before the real one arrives."""
    try:
        wait = float(wait)
    except (TypeError, ValueError):
        raise LssdError(f"lssd.verify: wait={wait!r} is not a number of seconds") from None
    cache = JobCache(opts)
    deadline = time.monotonic() + wait
    while True:
        found = outcome(cache, cache.jobs(), str(run_id), width)
        missing = [m for m, r in found["minions"].items() if r["result"] == "failed" and r.get("missing")]
        if not missing or time.monotonic() >= deadline:
            return found
        time.sleep(VERIFY_POLL)


def outcome(cache, jobs, run_id, width=None):
    peer_jids = sorted(j for j, job in jobs.items() if (_peer_job(job) or {}).get("run_id") == run_id)
    if not peer_jids:
        raise LssdError(f"the job cache holds no peer job of lssd run {run_id}: no peer was deployed "
                        f"(see salt-run jobs.list_jobs)")
    rows = {}
    for jid in peer_jids:
        rows.update(_rows(cache, jid))
    for minion in _skipped(cache, jobs, run_id):
        rows.setdefault(minion, table.skipped(minion, "not deployed: a canary failed"))
    failed = {m: r["reason"] for m, r in rows.items() if r["result"] == "failed"}
    skipped = sorted(m for m, r in rows.items() if r["result"] == "skipped")
    return {"tag": _peer_job(jobs[peer_jids[0]])["tag"], "run_id": run_id, "jids": peer_jids,
            "result": not failed and not skipped, "minions": rows, "failed": failed, "skipped": skipped,
            "table": table.render(rows, width=width)}


def _rows(cache, jid):
    """Rows of the minions one peer job targeted, from their cached returns."""
    returns = cache.returns(jid)
    targeted = cache.load(jid).get("Minions") or sorted(returns)
    rows = {}
    for minion in targeted:
        if minion not in returns:
            rows[minion] = dict(table.row(minion, False, f"no return in the master's job cache (job {jid})"),
                                missing=True)
            continue
        ok, reason = succeeded(returns[minion])
        rows[minion] = table.from_return(minion, ok, reason, returns[minion])
    return rows


def _peer_job(job):
    """``{"tag", "run_id"}`` of a cached job that deploys peers, else None."""
    args = job.get("Arguments") or []
    function = job.get("Function")
    if function == "state.high":
        deployed = bool(args) and isinstance(args[0], dict) and any(
            isinstance(body, dict) and "lssd" in body and "deployed" in body["lssd"] for body in args[0].values())
    else:
        deployed = function in ("state.sls", "state.apply") and bool(args) and args[0] == "lssd.peer"
    if not deployed:
        return None
    for arg in args:
        lssd = ((arg.get("pillar") or {}).get("lssd") or {}) if isinstance(arg, dict) else {}
        if lssd.get("run_id") and lssd.get("tag") is not None:
            return {"tag": str(lssd["tag"]), "run_id": str(lssd["run_id"])}
    return None


def _newest_run(jobs, tag):
    found = sorted((jid, _peer_job(job)) for jid, job in jobs.items())
    runs = [peer["run_id"] for _, peer in found if peer and peer["tag"] == tag]
    return runs[-1] if runs else None


def _run_of_jid(cache, jobs, jid):
    """The run id of a peer job, a runner deploy or an orchestrate of lssd.orch.deploy."""
    if jid in jobs and _peer_job(jobs[jid]):
        return _peer_job(jobs[jid])["run_id"]
    for ret in cache.returns(jid).values():
        value = _runner_return(ret)
        if isinstance(value, dict) and value.get("run_id"):
            return str(value["run_id"])  # salt-run lssd.deploy's return
        found = _ORCH_RUN.search(str(value)) if value else None
        if found:
            return found.group(1)
    return None


def _runner_return(ret):
    """A runner's return value in its job cache entry (stored bare or as its event data)."""
    value = ret.get("return")
    if isinstance(value, dict) and "fun" in value and "return" in value:
        value = value["return"]
    return value


def _skipped(cache, jobs, run_id):
    """The peers the runner deploy of ``run_id`` did not deploy (a canary failed), from the
    runner's return. They can only be added as skipped, never replace a peer's own row, so a
    forged entry here cannot turn a failure into a success."""
    for jid in sorted((j for j, job in jobs.items() if job.get("Function") == RUNNER_DEPLOY), reverse=True)[:20]:
        for ret in cache.returns(jid).values():
            value = _runner_return(ret)
            if isinstance(value, dict) and value.get("run_id") == run_id:
                return value.get("skipped") or []
    return []
