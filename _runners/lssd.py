"""
The operator's view of salt-lssd, on the master: deploy with live progress, inventory, reports.

- ``salt-run lssd.deploy``: the pipeline of ``lssd.orch.deploy`` (tracker, seeder, peers, stop)
  driven as Salt jobs, shown live in the terminal, ending with a per-minion table;
- ``salt-run lssd.status``: which minion holds which tag, what lssd runs where, the tracker's
  view of each swarm;
- ``salt-run lssd.report``: a past deploy's per-minion table, from the job cache.

The run-wide keys (``tag``, ``targets``, ``batch``, ``canary``, ``timeout``, ``job_timeout``,
``tracker:host``/``port``) come from the master's own pillar ``lssd`` (pillar id: the master's
``id``), as for the orchestrate; keyword arguments win. Each function is an adapter: one call
into ``salt_lssd.runner``, whose errors become Salt's.
"""

import os
import sys

try:
    import salt_lssd
except ImportError:
    # Classic install (file_roots/gitfs + salt-run saltutil.sync_all): the package arrives in
    # the master's extmods/utils beside this extmods/runners directory; in the repository it
    # sits in _utils beside _runners.
    _parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _candidate in (os.path.join(_parent, "utils"), os.path.join(_parent, "_utils")):
        if os.path.isdir(os.path.join(_candidate, "salt_lssd")) and _candidate not in sys.path:
            sys.path.append(_candidate)
    try:
        import salt_lssd
    except ImportError:
        salt_lssd = None

__virtualname__ = "lssd"


def __virtual__():
    if salt_lssd is None:
        return (
            False,
            "lssd runner: the salt_lssd package is missing: run salt-run saltutil.sync_all "
            "(classic install) or pip install salt-lssd into the Python that runs the master",
        )
    return __virtualname__


def _call(func, *args, **kwargs):
    """The workflow's return; an LssdError becomes a clean failure (exit code 1) naming the
    cause, never a traceback."""
    try:
        return func(*args, **kwargs)
    except salt_lssd.LssdError as exc:
        __context__["retcode"] = 1
        if __opts__.get("quiet"):
            # --quiet hides the return data, which is where the error is: say it on stderr.
            sys.stderr.write(f"lssd: {exc}\n")
            sys.stderr.flush()
        return {"result": False, "error": str(exc), "retcode": 1}


def _for_people():
    """True when salt-run prints for a person (no machine outputter such as --out=json)."""
    from salt_lssd.runner.display import mode_for

    return mode_for(__opts__) != "quiet"


def _overrides(kwargs):
    """The keyword arguments of salt-run, without Salt's own (``__pub_*``)."""
    return {k: v for k, v in kwargs.items() if not k.startswith("__") and v is not None}


def deploy(tag=None, tgt=None, batch=None, canary=None, tracker=None, seeder=None, pillar=None, **kwargs):
    """
    Deploy a tag: tracker, seeder, every peer, then stop; live progress and a per-minion table.

    tag
        The deploy tag. Default: the master's pillar ``lssd:tag`` (required, no default).
    tgt
        Compound target of the peers. Default: the master's pillar ``lssd:targets:peer``.
    tracker, seeder
        Compound targets of the tracker and the seeder. Default: ``lssd:targets:tracker`` and
        ``lssd:targets:seeder`` of the master's pillar.
    batch
        Deploy the peers this many (``10``) or this share (``'25%'``) at a time. Default:
        ``lssd:batch``, else all at once.
    canary
        A count (the first peers by id) or a compound target: these deploy first, the rest only
        if they all succeeded. Default: ``lssd:canary``, else none.
    timeout, job_timeout
        Seconds a peer's download may take, and each step's job (the peers' step: both).
        Default: ``lssd:timeout`` (3600) and ``lssd:job_timeout`` (600).
    pillar
        Pillar overrides for reading the master's pillar, as in ``state.orchestrate``.

    In a terminal it shows one line per phase, then the swarm's progress (peers done,
    downloading, waiting, failed; aggregate rate; seeder upload; ETA; the slowest peers), then
    the table. With ``--out=json`` it shows nothing but the return data. The exit code is 1 if
    any minion failed; ``failed`` names each with its reason.

    CLI Example:

    .. code-block:: bash

        salt-run lssd.deploy
        salt-run lssd.deploy tag=Deploy2 tgt='web*' batch=10
        salt-run lssd.deploy tag=Deploy2 canary=2 --out=json
    """
    from salt_lssd.runner import pipeline

    overrides = _overrides(dict(kwargs, tag=tag, tgt=tgt, batch=batch, canary=canary, tracker=tracker, seeder=seeder))
    ret = _call(pipeline.deploy, __opts__, pillar=pillar, **overrides)
    if ret.get("retcode"):
        __context__["retcode"] = ret["retcode"]
    return ret


def status(tgt="*", timeout=60):
    """
    Inventory: per minion the ``current`` tag, the installed tags and the running lssd
    roles; per tracker the swarm of each tag (seeders, leechers, completed).

    tgt
        Compound target of the minions to ask. Default: all.
    timeout
        Seconds to wait for the minions. Default: 60.

    CLI Example:

    .. code-block:: bash

        salt-run lssd.status
        salt-run lssd.status tgt='web*'
    """
    from salt_lssd.runner import inventory

    return _call(inventory.status, __opts__, tgt=str(tgt), timeout=float(timeout))


def report(jid=None, tag=None):
    """
    The per-minion table of a past deploy, from the master's job cache.

    jid
        The job id of a ``salt-run lssd.deploy`` run, or of a peer job it (or the orchestrate)
        started.
    tag
        Instead of ``jid``: the newest deploy of this tag.

    CLI Example:

    .. code-block:: bash

        salt-run lssd.report tag=Deploy2
        salt-run lssd.report jid=20261201012345678901 --out=json

    In a terminal it prints the table alone (reasons wrapped to the terminal's width); with
    ``--out=json`` (or yaml) the data: ``minions`` (a row per peer), ``failed``, ``skipped``,
    ``jids`` (the peer jobs read), ``run_id`` and ``table``. Each peer's outcome comes from
    the return the master stored for it, never from an event.
    """
    import shutil

    from salt_lssd.runner import report as past

    width = shutil.get_terminal_size((110, 24)).columns if _for_people() else None
    ret = _call(past.report, __opts__, jid=jid, tag=tag, width=width)
    if width and "table" in ret:
        # A string: Salt's default outputter prints it as it is, the table and nothing else.
        return "\n".join(ret["table"] + ["", _summary(ret)])
    return ret


def _summary(ret):
    failed, skipped = ret["failed"], ret["skipped"]
    text = f"{ret['tag']} (run {ret['run_id']}): {len(ret['minions'])} peers"
    if not failed and not skipped:
        return text + ", every one deployed"
    return text + f", {len(failed)} failed" + (f", {len(skipped)} skipped" if skipped else "")


def verify(run_id, wait=0, end_run=False, **kwargs):
    """
    Check a finished deploy against the master's job cache; the orchestrate's last step.

    run_id
        The run's ``lssd:run_id`` (every peer job carries it in its pillar).
    wait
        Seconds to wait for returns not yet in the job cache. Default: 0.
    end_run
        Then forget the run on the master, as ``lssd.run_end`` does (the orchestrate: one
        runner job less per run, each of which costs the master a pass over its keys).
        Default: false.

    Fails (exit code 1), naming each peer whose stored return is a failure or missing: the
    returns a peer job's step read from the event bus may have been forged by another minion,
    the job cache's may not.

    CLI Example:

    .. code-block:: bash

        salt-run lssd.verify 6c1e...
    """
    from salt_lssd import channel
    from salt_lssd.runner import report as past

    try:
        ret = _call(past.verify, __opts__, run_id, wait=wait)
    finally:
        if end_run:
            _call(channel.forget, __opts__, str(run_id))
    if ret.get("result") is False and "error" not in ret:
        __context__["retcode"] = 1
        ret = dict(ret, comment="not deployed: " + "; ".join(
            f"{m}: {r}" for m, r in sorted(ret["failed"].items())) + (
            f"; skipped: {', '.join(ret['skipped'])}" if ret["skipped"] else ""))
    return ret


def plan(lssd=None, register=True, **kwargs):
    """
    Plan one deploy on the master: check the run-wide settings, resolve every role's minions
    once, choose the canary and batch waves, and register the run, so that its minions (and
    no others) can read its torrent through the ``lssd`` ext_pillar. ``lssd.orch.deploy`` calls
    it while it renders; ``salt-run lssd.deploy`` plans the same way.

    lssd
        Pillar ``lssd`` as the caller sees it (the orchestrate passes its own, pillar= included).
        Default: the master's own pillar ``lssd``.
    register
        Register the run with the master's run channel. Default: true; a dry run
        (``test=True``) passes false.

    Returns the plan (``run_id``, ``roles``, ``waves``, ``batch``, timeouts, ``run_pillar``),
    or ``error`` naming the bad setting or the target that matches nothing.

    CLI Example:

    .. code-block:: bash

        salt-run lssd.plan
        salt-run lssd.plan lssd='{"tag": "Deploy2", "targets": {"tracker": "t1", "seeder": "b1", "peer": "web*"}}'
    """
    from salt_lssd.runner import plan as run_plan
    from salt_lssd.runner.settings import master_pillar

    if lssd is None:
        lssd = (master_pillar(__opts__) or {}).get("lssd") or {}
    return _call(run_plan.make, __opts__, lssd, _overrides(kwargs), register=bool(register))


def run_end(run_id):
    """
    Forget run ``run_id`` on the master: its minions are served nothing more for it
    (``lssd.orch.deploy``'s last step does it with ``lssd.verify end_run=True``,
    ``salt-run lssd.deploy`` itself).

    CLI Example:

    .. code-block:: bash

        salt-run lssd.run_end 1b4e28ba-2fa1-11d2-883f-0016d3cca427
    """
    from salt_lssd import channel

    return _call(channel.forget, __opts__, str(run_id))
