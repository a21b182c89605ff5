"""The README's role-by-role table (ansible-lssd → salt-lssd), run as written.

Each row's command is read from README.md and run with the salt CLI against the real master,
in the table's order, with the README's names mapped to this fleet's minions and tag: a row
the README leaves out (the tracker's registration once was) fails the deploy here as it
would for an operator following the table.
"""

import re
import shlex

import pytest

from .lssd_integration import PEERS, REPO

pytestmark = pytest.mark.integration

# The README's example names -> this fleet's.
NAMES = {"tracker01": "tracker", "build01": "seeder"}
# setup.yml installs libtorrent, zstd and pigz, which this test environment has already;
# site.yml is the orchestrate, which the other integration tests run.
NOT_RUN = ("setup.yml", "site.yml")


def table_rows():
    """``[(playbook, command)]`` of the README's ansible-lssd table, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## ansible-lssd → salt-lssd", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`salt"):
            rows.append((cells[0], re.match(r"`([^`]+)`", cells[1]).group(1)))
    return rows


def as_run_here(command, tag):
    """(salt CLI flags and arguments, target) of a README command, in this fleet's names."""
    words = shlex.split(command)
    assert words[0] == "salt", command
    words = words[1:]
    flags = []
    while words[0].startswith("-"):
        flags.append(words.pop(0))
    target = words.pop(0)
    for readme_name, here in NAMES.items():
        target = target.replace(readme_name, here)
    args = [w.replace("Deploy1", tag) for w in words]
    return flags + args, target


def failed_states(data):
    """The comments of every state result in a salt CLI return that failed."""
    found = []
    if isinstance(data, dict):
        if data.get("result") is False and "comment" in data:
            found.append(data["comment"])
        for value in data.values():
            found += failed_states(value)
    return found


def test_the_readme_manual_flow_deploys_every_peer(lssd_env, case):
    rows = table_rows()
    playbooks = [playbook for playbook, _ in rows]
    assert playbooks[:2] == ["setup.yml", "start_tracker.yml"] and "deploy.yml" in playbooks, playbooks
    ran = []
    for playbook, command in rows:
        if playbook in NOT_RUN:
            continue
        args, target = as_run_here(command, case.tag)
        ret = lssd_env.salt.run(*args, minion_tgt=target)
        ran.append(command)
        assert ret.returncode == 0 and not failed_states(ret.data), \
            f"README row {playbook!r}: {command} failed: {failed_states(ret.data)}\n{ret.stdout}\n{ret.stderr}"
        if playbook == "deploy.yml":
            for peer in PEERS:
                assert case.tags_in(peer) == [case.tag], (peer, ret.data)
                assert (case.destination(peer) / case.tag / "bin").is_dir(), peer
    assert any("tracker_allow" in command for command in ran), ran
    # The table's stop rows leave nothing of the flow running.
    assert not {"tracker", "seeder"} & lssd_env.running_roles()
