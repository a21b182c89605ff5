"""What a runner-driven deploy reads on the master: the run-wide keys of pillar ``lssd``.

The orchestrate renders with the master's own pillar (pillar id: the master's ``id``); the
runner reads the same pillar, then keyword arguments of ``salt-run`` win. Each key goes through
the one check of ``salt_lssd.settings``; required keys have no default, and a run without one
fails before any job, naming the key and the pillar id it was looked for under.
"""

import uuid

from salt_lssd import LssdError
from salt_lssd.settings import REQUIRED, check, default

# The run-wide keys, in the order a missing one is reported.
KEYS = ("tag", "targets:tracker", "targets:seeder", "targets:peer", "batch", "canary", "timeout", "job_timeout",
        "app", "reach_timeout", "unreachable")


def master_pillar(opts, pillar_override=None):
    """The master's own pillar (pillar id ``opts['id']``), as the orchestrate renders with it."""
    import salt.loader
    import salt.pillar

    grains = opts.get("grains") or salt.loader.grains(opts)
    pillar = salt.pillar.get_pillar(
        opts, grains, opts["id"], saltenv=opts.get("saltenv") or "base",
        pillarenv=opts.get("pillarenv"), pillar_override=pillar_override,
    )
    return pillar.compile_pillar()


def _traverse(data, key):
    for part in key.split(":"):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def run_settings(pillar, master_id, overrides):
    """The checked run-wide settings: ``overrides`` (``tgt`` stands for ``targets:peer``) over
    pillar ``lssd`` over defaults; LssdError naming every missing required key."""
    lssd = (pillar or {}).get("lssd") or {}
    found, missing = {}, []
    for key in KEYS:
        value = overrides.get(key.replace("targets:", "") if key.startswith("targets:") else key)
        if key == "targets:peer" and overrides.get("tgt") not in (None, ""):
            value = overrides["tgt"]
        label = key.rpartition(":")[2] if value not in (None, "") else f"lssd:{key}"
        if value in (None, ""):
            value = _traverse(lssd, key)
        if value in (None, ""):
            value = default(key)
        if value is REQUIRED:
            missing.append(f"lssd:{key}")
            continue
        found[key] = check(key, value, label) if value is not None else None
    if missing:
        raise LssdError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set in the master's "
            f"pillar (pillar id {master_id}) and not given as an argument; there is no default. "
            f"Assign the lssd pillar to {master_id} in the pillar top, or pass "
            + ", ".join(m.rpartition(":")[2] + "=" for m in missing)
        )
    found["run_pillar"] = _run_pillar(lssd, found)
    return found


def _run_pillar(lssd, found):
    """What every role gets through ``pillar=``: the values that must agree in one run."""
    # The targets too: the seeder lets only them read the torrent's mine entry, and peers
    # trust only the seeder's entry.
    targets = {role: found[f"targets:{role}"] for role in ("tracker", "seeder", "peer")}
    run = {"tag": found["tag"], "run_id": str(uuid.uuid4()), "targets": targets}
    if found.get("app"):  # every role works in the run's app namespace
        run["app"] = found["app"]
    tracker = {k: v for k, v in (lssd.get("tracker") or {}).items() if k in ("host", "port") and v not in (None, "")}
    if tracker:
        run["tracker"] = tracker
    return {"lssd": run}


def batch_size(batch, count):
    """Peers deployed at once: all of ``count``, a number, or a percentage such as '25%'."""
    if batch in (None, ""):
        return max(count, 1)
    text = str(batch).strip()
    if text.endswith("%") and text[:-1].isdigit() and int(text[:-1]) > 0:
        return max(1, count * int(text[:-1]) // 100)
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise LssdError(f"lssd:batch {batch!r} must be a count such as 10 or a percentage such as '25%'")
