"""One run's plan, the same for ``lssd.orch.deploy`` and ``salt-run lssd.deploy``.

A plan is the checked run-wide settings (``runner.settings``), every role's minions resolved
once (``runner.targets``), the canary and batch waves of the peers, the step timeouts and the
pillar each role is handed; planning registers the run with the master's run channel
(``channel``), through which the run's minions, and only they, read the torrent. The
orchestrate asks for it with one ``saltutil.runner('lssd.plan', ...)`` call while it renders;
the runner calls :func:`make` in-process. Either way a behaviour (a check, the canary choice,
the waves) is written here once, and a bad setting or a target matching nothing fails before
any job starts, naming the key.
"""

import json
import time

from salt_lssd import LssdError, channel
from salt_lssd.runner.settings import batch_size, run_settings
from salt_lssd.runner.targets import resolver


def make(opts, lssd_pillar, overrides=None, register=True):
    """The plan of a deploy: ``lssd_pillar`` is pillar ``lssd`` as the master sees it (the
    orchestrate's, with its pillar=), ``overrides`` salt-run's keyword arguments. A dry run
    plans without ``register``: no minion is served anything for it."""
    channel.configured(opts)
    settings = run_settings({"lssd": lssd_pillar or {}}, opts["id"], overrides or {})
    resolve = resolver(opts)
    roles = {}
    for role in ("tracker", "seeder", "peer"):
        roles[role] = _matching(resolve, settings[f"targets:{role}"], f"lssd:targets:{role}")
    down = _down(opts, roles, settings["reach_timeout"], settings["unreachable"])
    roles["peer"] = [m for m in roles["peer"] if m not in down]
    if not roles["peer"]:
        raise LssdError(f"no peer of lssd:targets:peer answered; down: {', '.join(down)}")
    canary = _canary(resolve, settings, roles["peer"])
    run_pillar = settings["run_pillar"]
    lssd = run_pillar["lssd"]
    lssd["run_peers"] = len(roles["peer"])
    if register:
        channel.register(opts, lssd["run_id"], lssd["tag"], lssd.get("app"), roles)
    waves = [{"name": "canary", "minions": canary}] if canary else []
    chosen = set(canary)
    rest = [m for m in roles["peer"] if m not in chosen]
    if rest:
        waves.append({"name": "peers", "minions": rest})
    return {
        "run_id": lssd["run_id"],
        "tag": settings["tag"],
        "app": settings.get("app"),
        "roles": roles,
        "waves": waves,
        "batch": None if settings.get("batch") in (None, "") else str(settings["batch"]),
        "job_timeout": int(settings["job_timeout"]),
        "peer_timeout": int(settings["timeout"] + settings["job_timeout"]),
        "timeout": int(settings["timeout"]),
        "run_pillar": run_pillar,
        "down": down,
    }


def _down(opts, roles, timeout, policy):
    """The peers that do not answer a ``test.ping`` within ``timeout`` seconds, with
    ``policy`` skip; LssdError naming every minion down, if a tracker or seeder is, or with
    ``policy`` fail. One round for the whole run: a down minion is named now, not after a
    job's timeout."""
    everyone = sorted({m for ids in roles.values() for m in ids})
    answered = _ping(opts, everyone, timeout)
    down = [m for m in everyone if m not in answered]
    control = sorted(m for m in down if m in roles["tracker"] or m in roles["seeder"])
    if control or (down and policy == "fail"):
        raise LssdError(
            f"down: {', '.join(down)} did not answer test.ping within {timeout:g}s (lssd:reach_timeout); "
            + ("the run needs its tracker and seeder" if control else
               "lssd:unreachable is fail; set it to skip to deploy the others")
            + f". Check: salt {' '.join(down[:1])} test.ping; salt-run manage.down"
        )
    return down


def _ping(opts, minions, timeout):
    """The ``minions`` that answer ``test.ping`` within ``timeout`` seconds. A deadline of
    our own: Salt's ``LocalClient.cmd`` keeps asking a down minion (find_job) past it."""
    import salt.client  # pylint: disable=import-outside-toplevel

    client = salt.client.LocalClient(mopts=opts)
    answered = set()
    try:
        pub = client.run_job(minions, "test.ping", tgt_type="list", timeout=timeout, listen=True)
        deadline = time.monotonic() + timeout
        for event in client.get_returns_no_block(f"salt/job/{pub['jid']}/ret"):
            data = (event or {}).get("data") or {}
            if data.get("return") is True and data.get("id") in minions:
                answered.add(data["id"])
            if len(answered) == len(minions) or time.monotonic() >= deadline:
                return answered
    finally:
        client.destroy()
    return answered


def _matching(resolve, expr, label):
    found = resolve(expr)
    if not found:
        raise LssdError(
            f"{label} {json.dumps(expr)} matches no minion the master knows (an accepted key with "
            f"cached grains); check the compound expression (salt -C {json.dumps(expr)} test.ping) "
            "and salt-key -L"
        )
    return found


def _canary(resolve, settings, peers):
    """The canary peers: a count takes the first peers by id, a target the peers it matches."""
    canary = settings.get("canary")
    if canary in (None, ""):
        return []
    if isinstance(canary, int) or str(canary).strip().isdigit():
        count = int(str(canary).strip())
        if count < 1:
            raise LssdError(f"lssd:canary {canary!r} must be a count of 1 or more, or a compound target")
        return peers[:count]
    chosen = resolve(f"( {settings['targets:peer']} ) and ( {canary} )")
    if not chosen:
        raise LssdError(f"lssd:canary {canary!r} matches none of the peers of lssd:targets:peer")
    return chosen


def wave_size(plan, wave):
    """How many peers of ``wave`` deploy at once (``batch``: a count or a share)."""
    return batch_size(plan["batch"], len(wave["minions"]))
