"""The runner's pure parts: run-wide settings, the swarm view folded from events, the table."""

import pytest

from salt_lssd import LssdError
from salt_lssd.runner import display, table
from salt_lssd.runner.jobs import succeeded
from salt_lssd.runner.settings import batch_size, run_settings
from salt_lssd.runner.view import SwarmView

PILLAR = {"lssd": {"tag": "Deploy7", "targets": {"tracker": "t", "seeder": "s", "peer": "web*"},
                   "tracker": {"host": "10.0.0.1", "port": 8998, "bind": "0.0.0.0"}}}


def test_run_settings_take_arguments_over_the_master_pillar():
    found = run_settings(PILLAR, "m_master", {"tag": "Deploy8", "tgt": "web1"})
    assert found["tag"] == "Deploy8" and found["targets:peer"] == "web1" and found["targets:tracker"] == "t"
    assert found["run_pillar"]["lssd"]["tag"] == "Deploy8"
    # Only the run-wide tracker address goes to the roles, not the bind address.
    assert found["run_pillar"]["lssd"]["tracker"] == {"host": "10.0.0.1", "port": 8998}
    assert found["timeout"] == 3600 and found["job_timeout"] == 600


def test_missing_required_keys_are_named_with_the_master_pillar_id():
    with pytest.raises(LssdError) as err:
        run_settings({"lssd": {"targets": {"tracker": "t"}}}, "m_master", {})
    message = str(err.value)
    for key in ("lssd:tag", "lssd:targets:seeder", "lssd:targets:peer"):
        assert key in message
    assert "lssd:targets:tracker" not in message and "m_master" in message


def test_a_bad_tag_argument_is_named():
    with pytest.raises(LssdError, match="tag 'a/b' may not contain"):
        run_settings(PILLAR, "m", {"tag": "a/b"})


@pytest.mark.parametrize("batch,count,size", [(None, 8, 8), (3, 8, 3), ("25%", 8, 2), ("10%", 4, 1)])
def test_batch_size(batch, count, size):
    assert batch_size(batch, count) == size


def test_batch_size_refuses_what_is_not_a_count_or_a_share():
    with pytest.raises(LssdError, match="lssd:batch 'x'"):
        batch_size("x", 3)


def test_view_folds_events_into_states_rates_and_eta():
    view = SwarmView("T", ["web1", "web2", "web3"])
    view.on_event("lssd/peer/T/start", {"tag": "T", "size": 1000}, "web1")
    view.on_event("lssd/peer/T/progress", {"progress": 50, "download_rate": 100, "total_done": 500,
                                           "size": 1000}, "web1")
    view.on_event("lssd/peer/T/progress", {"progress": 10, "download_rate": 50, "total_done": 100,
                                           "size": 1000}, "web2")
    view.on_event("lssd/peer/T/failed", {"tag": "T", "reason": "disk full"}, "web3")
    view.on_event("lssd/peer/OTHER/failed", {"reason": "not ours"}, "web1")
    assert view.counts() == {"done": 0, "downloading": 2, "installing": 0, "waiting": 0, "failed": 1, "skipped": 0}
    assert view.rate() == 150
    assert view.eta() == pytest.approx(18.0)  # web2: 900 bytes at 50 B/s
    assert [p.name for p in view.slowest(1)] == ["web2"]
    assert view.peers["web3"].reason == "disk full"
    view.on_event("lssd/peer/T/complete", {"bytes": 1000}, "web1")
    assert view.peers["web1"].status == "done"
    lines = display.progress_lines(view, 12)
    assert "1/3 done, 1 downloading" in lines[0] and "failed: web3" in lines[2]


def test_succeeded_reads_state_and_function_returns():
    state = {"lssd_|-x_|-x_|-deployed": {"result": False, "comment": "no space left"}}
    assert succeeded({"return": state, "retcode": 2}) == (False, "no space left")
    assert succeeded({"return": "ERROR: tracker is not running", "retcode": 1}) == (False, "tracker is not running")
    assert succeeded({"return": {"lssd_|-x_|-x_|-deployed": {"result": True}}, "retcode": 0}) == (True, "")


def test_table_rows_and_render():
    ret = {"return": {"lssd_|-T_|-T_|-deployed": {"result": True, "comment": "deployed T", "changes": {
        "deployed": {"bytes": 2_000_000, "seconds": 2.0, "from_seeder": 500_000, "from_peers": 1_500_000,
                     "install_seconds": 0.5}}}}}
    rows = {"web1": table.from_return("web1", True, "", ret),
            "web2": table.row("web2", False, "download of T failed: disk full")}
    assert rows["web1"]["result"] == "ok" and rows["web1"]["install_seconds"] == 0.5
    lines = table.render(rows)
    assert lines[0].split()[:3] == ["minion", "result", "bytes"]
    assert lines[2].split() == ["web1", "ok", "2.0", "MB", "2.00", "1.0", "0.5", "MB", "1.5", "MB", "0.50"]
    assert lines[3].startswith("web2    failed") and lines[3].endswith("download of T failed: disk full")


def test_long_reasons_wrap_within_the_width_and_are_trimmed():
    reason = "download of T failed: " + " ".join(f"word{i}" for i in range(80))
    rows = {"web1": table.row("web1", False, reason), "web2": table.row("web2", False, "disk full")}
    lines = table.render(rows, width=110)
    assert max(len(line) for line in lines) <= 110, lines
    web1 = [i for i, line in enumerate(lines) if line.startswith("web1")][0]
    # Three lines at most for one reason, the last one saying that some was left out.
    assert lines[web1 + 2].endswith("...") and lines[web1 + 3].startswith("web2")
    assert lines[web1 + 3].endswith("disk full")
    # Without a width (the return data's table) nothing is cut.
    assert any(line.endswith("word79") for line in table.render(rows))


def test_skipped_peers_are_counted_apart_from_failed_ones():
    view = SwarmView("T", ["web1", "web2"])
    view.finished("web1", False, "canary failed its hook")
    view.skipped("web2")
    assert view.counts()["failed"] == 1 and view.counts()["skipped"] == 1
    assert "1 failed, 1 skipped" in display.progress_lines(view, 3)[0]
    row = table.skipped("web2", "not deployed: a canary failed")
    assert row["result"] == "skipped"
    assert table.render({"web2": row})[2].split()[:2] == ["web2", "skipped"]
