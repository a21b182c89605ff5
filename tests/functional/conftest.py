"""Functional tests: the real ``lssd`` modules through Salt's loader, no daemons.

Each role gets its own minion options (id, cachedir, hence its own lssd state directory), as
several minions sharing one machine would.
"""

import pytest
from loaderutil import free_port, minion_loaders, stop_everything


@pytest.fixture
def tracker_port():
    return free_port()


@pytest.fixture
def make_minion(tmp_path, tracker_port):
    """make_minion(name, **lssd_config) -> Loaders for a minion with its own cachedir."""
    made = []

    def make(name, **lssd):
        loaders = minion_loaders(tmp_path, name, tracker_port, **lssd)
        made.append(loaders)
        return loaders

    yield make
    for loaders in made:
        stop_everything(loaders)


@pytest.fixture
def origin(make_minion, tracker_port):
    """A minion running the tracker, which also seeds (see each module's ``seed``)."""
    minion = make_minion("origin")
    minion.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    yield minion
    minion.modules.lssd.seed_stop()
    minion.modules.lssd.tracker_stop()
