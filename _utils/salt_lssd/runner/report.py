"""``salt-run lssd.report``: the per-minion table of a past deploy, from the master's job cache.

A deploy leaves two kinds of jobs there: the runner's own (``runner.lssd.deploy``, whose return
holds the rows) and the peer jobs (``state.high`` of ``lssd.deployed <tag>`` from the runner,
``state.sls lssd.peer`` from the orchestrate), whose returns hold each peer's ``lssd.deployed``
result. ``jid`` names either kind; ``tag`` picks the newest deploy of that tag.
"""

from salt_lssd import LssdError
from salt_lssd.common import validate_tag
from salt_lssd.runner import table
from salt_lssd.runner.jobs import succeeded


def _runner(opts):
    import salt.runner

    return salt.runner.RunnerClient(opts)


def report(opts, jid=None, tag=None):
    if (jid is None) == (tag is None):
        raise LssdError("lssd.report needs exactly one of jid= (a deploy's job id) or tag= (its newest deploy)")
    runner = _runner(opts)
    jids = [str(jid)] if jid is not None else _peer_jobs(runner, validate_tag(tag))
    rows = {}
    for each in jids:
        rows.update(_rows(runner.cmd("jobs.lookup_jid", [each], kwarg={"display_progress": False, "missing": True})))
    if not rows:
        raise LssdError(f"job {jid} holds no lssd deploy (see salt-run jobs.list_jobs)" if jid is not None
                        else f"the job cache holds no deploy of tag {tag!r} (see salt-run jobs.list_jobs)")
    failed = {m: r["reason"] for m, r in rows.items() if r["result"] == "failed"}
    return {"jids": jids, "minions": rows, "failed": failed, "table": table.render(rows)}


def _deploy_return(value):
    """The runner's deploy return inside a job cache entry (stored whole or as event data)."""
    if isinstance(value, dict) and "fun" in value and isinstance(value.get("return"), dict):
        value = value["return"]
    if isinstance(value, dict) and isinstance(value.get("minions"), dict) and "tag" in value:
        return value
    return None


def _rows(found):
    """Rows from one job's returns: a runner's deploy return, or peers' state returns."""
    if _deploy_return(found):
        return _deploy_return(found)["minions"]
    rows = {}
    for minion, value in (found or {}).items():
        if _deploy_return(value):
            return _deploy_return(value)["minions"]
        if not isinstance(value, (dict, list, str)):
            continue
        ret = {"return": value, "retcode": 0}
        if table.deployed_state(ret) is None:
            ret["retcode"] = 1 if not isinstance(value, dict) else 0
            if not isinstance(value, dict):
                rows[minion] = table.row(minion, False, str(value))
            continue
        ok, reason = succeeded(ret)
        rows[minion] = table.from_return(minion, ok, reason, ret)
    return rows


def _peer_jobs(runner, tag):
    """The jids of the newest deploy of ``tag``: the newest runner deploy, else the peer jobs
    of the newest orchestrate (all of its batches)."""
    jobs = runner.cmd("jobs.list_jobs", kwarg={"display_progress": False}) or {}
    newest = sorted(jobs.items(), key=lambda kv: kv[0], reverse=True)
    deploys = [jid for jid, job in newest if job.get("Function") == "runner.lssd.deploy"]
    for jid in deploys[:20]:
        found = runner.cmd("jobs.lookup_jid", [jid], kwarg={"display_progress": False}) or {}
        if any((_deploy_return(v) or {}).get("tag") == tag for v in [found, *found.values()]):
            return [jid]
    peers = [jid for jid, job in newest if _is_peer_job(job, tag)]
    return peers[:1]


def _is_peer_job(job, tag):
    args = job.get("Arguments") or []
    if job.get("Function") == "state.high":
        return bool(args) and isinstance(args[0], dict) and "lssd" in (args[0].get(tag) or {})
    if job.get("Function") in ("state.sls", "state.apply"):
        return bool(args) and args[0] == "lssd.peer" and _mentions(args, tag)
    return False


def _mentions(value, tag):
    if isinstance(value, dict):
        return any(_mentions(v, tag) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, tag) for v in value)
    return str(value) == tag
