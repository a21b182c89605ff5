"""The operator's view on the master: the ``lssd`` runner's workflows.

``_runners/lssd.py`` is an adapter over this package: ``pipeline`` drives a deploy (tracker,
seeder, tracker registration, peers, stop) as Salt jobs, ``jobs`` publishes them and collects
their returns and the ``lssd/...`` events from the master's event bus, ``view`` folds those
events into the swarm's progress, ``display`` draws it in the terminal, ``table`` turns
per-minion results into the deploy table, ``inventory`` answers "who holds which tag" and
``report`` rebuilds a past deploy's table from the job cache. Only this package imports Salt's
master-side APIs; the detached processes never load it.
"""
