"""The control-plane workflows of salt_lssd driven without Salt's loader.

Each workflow takes a ``Minion``; here it is built over plain functions: pillar is a dict,
the mine an in-memory store shared by the minions of a test, events a list. The workflows
themselves (packing, torrents, plans, records) run for real.
"""

import base64
import os
import time

import pytest
from lssd_testutil import make_build_tree
from salt_lssd import LssdError, NotPublished, channel, deploy, inventory, mine, plans, seeder, tag_grains
from salt_lssd.common import Layout, read_json, write_json_atomic
from salt_lssd.minion import Minion, event_bus_up


class Fleet:
    """Minions sharing one in-memory mine, as a master would hold it, and the master's run
    channel (``channel.serve``, as its ext_pillar runs it) over that mine."""

    def __init__(self, root):
        self.root = root
        self.mine = {}  # alias -> {minion id: entry}
        self.events = []
        self.master_opts = {"cachedir": os.path.join(root, "master-cache")}

    def plan_run(self, run_id, tag, tracker=("build01",), seeder=("build01",), peer=("web1",), app=None):
        """Register run ``run_id`` with the master, as the run plan does."""
        channel.register(self.master_opts, run_id, tag, app,
                         {"tracker": list(tracker), "seeder": list(seeder), "peer": list(peer)})

    def _pillar_items(self, name, pillar):
        def mine_cache(who):
            return {alias: entries[who] for alias, entries in self.mine.items() if who in entries}

        served = channel.serve(self.master_opts, name, {"lssd": dict((pillar or {}).get("lssd") or {})}, mine_cache)
        return dict(pillar or {}, **served)

    def minion(self, name, **lssd):
        # With a master, mine entries are read only from the targeted roles.
        lssd.setdefault("targets", {"tracker": "*", "seeder": "*", "peer": "*"})
        pillar = {"lssd": lssd}

        def config_get(key, default=None):
            value = pillar
            for part in key.split(":"):
                if not isinstance(value, dict) or part not in value:
                    return default
                value = value[part]
            return value

        def mine_get(tgt, alias, tgt_type="glob"):
            entries = self.mine.get(alias, {})
            return {k: v for k, v in entries.items() if tgt in ("*", k)}

        salt = {
            "config.get": config_get,
            "pillar.items": lambda pillar=None, unmask=None: self._pillar_items(name, pillar),
            "mine.get": mine_get,
            "mine.send": lambda alias, mine_function, **kw: None,
            "mine.delete": lambda alias: self.mine.get(alias, {}).pop(name, None),
            "event.send": lambda tag, data: self.events.append((tag, data)),
            "cp.cache_file": lambda url: False,
        }
        cachedir = os.path.join(self.root, name, "cache")
        os.makedirs(cachedir, exist_ok=True)
        return Minion({"id": name, "cachedir": cachedir}, salt, {"ipv4": ["127.0.0.1"]})

    def publish(self, seeder_minion, tag, nonce="n1"):
        """What seed_start publishes, without starting a seeder process."""
        meta = seeder.local_torrent(seeder_minion, tag)
        with open(seeder_minion.layout.torrent(tag), "rb") as fh:
            entry = mine.torrent_entry(seeder_minion, tag, fh.read(), meta, nonce, seeder_minion.setting("run_id"))
        self.mine.setdefault(mine.torrent_alias(tag, seeder_minion.app), {})[seeder_minion.id] = entry
        return entry


@pytest.fixture
def fleet(tmp_path):
    return Fleet(str(tmp_path))


@pytest.fixture
def built(fleet, tmp_path):
    """A seeder minion that made the torrent of tag T1 and published it."""
    build = make_build_tree(tmp_path / "build", data_mb=1)
    made = fleet.minion("build01", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969})
    result = seeder.create_torrent(made, "T1")
    fleet.publish(made, "T1")
    return made, result


def test_create_torrent_records_and_announces(fleet, built):
    made, result = built
    # The passkey is in the torrent, never in what a job returns.
    assert result["tracker"] == "http://127.0.0.1:6969/announce"
    with open(result["torrent"], "rb") as fh:
        assert b"/announce?passkey=" in fh.read()
    assert result["ssl"] is True and os.path.isfile(result["key_path"])
    assert seeder.torrent_info(made, "T1")["infohash"] == result["infohash"]
    assert ("lssd/seeder/T1/torrent", {k: result[k] for k in ("tag", "infohash", "sha256", "size")}) in fleet.events


def test_lookup_reads_the_published_entry_and_checks_it(fleet, built):
    _, result = built
    peer = fleet.minion("web1")
    found = deploy.lookup(peer, "T1")
    assert (found["sha256"], found["seeder"], found["nonce"]) == (result["sha256"], "build01", "n1")
    assert deploy.lookup(peer, "T2", missing_ok=True)["published"] is False
    with pytest.raises(NotPublished, match="no seeder publishes tag 'T2'"):
        deploy.lookup(peer, "T2")
    with pytest.raises(NotPublished, match="with nonce other"):
        mine.lookup_torrent(peer, "T1", nonce="other")


def test_a_tree_mode_torrent_travels_compressed_and_reads_back(fleet, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    made = fleet.minion("build01", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969}, mode="tree")
    result = seeder.create_torrent(made, "T1")
    entry = fleet.publish(made, "T1")
    assert entry["encoding"] == "zlib"
    assert len(entry["torrent"]) < len(base64.b64encode(open(result["torrent"], "rb").read()))
    found = mine.lookup_torrent(fleet.minion("web1"), "T1")
    assert found["info"]["lssd"]["mode"] == "tree" and found["info"]["infohash"] == result["infohash"]
    assert found["info"]["files"] > 1 and found["data"] == open(result["torrent"], "rb").read()


def test_lookup_refuses_an_entry_whose_torrent_does_not_match(fleet, built):
    entry = fleet.mine[mine.torrent_alias("T1")]["build01"]
    entry["sha256"] = "0" * 64
    with pytest.raises(LssdError, match="does not match its own torrent"):
        deploy.lookup(fleet.minion("web1"), "T1")


def test_two_seeders_with_different_builds_are_refused(fleet, built):
    entry = dict(fleet.mine[mine.torrent_alias("T1")]["build01"], sha256="1" * 64)
    fleet.mine[mine.torrent_alias("T1")]["build02"] = entry
    with pytest.raises(LssdError, match="publish different builds for tag 'T1'"):
        deploy.lookup(fleet.minion("web1"), "T1")


def test_deployed_plan_downloads_then_switches_and_says_so(fleet, built, tmp_path):
    dest = str(tmp_path / "app")
    peer = fleet.minion("web1", destination_path=dest, current=True)
    plan = plans.plan(peer, "deployed", "T1", test=True)
    assert [step["call"] for step in plan["steps"]] == ["peer", "switch_current"]
    assert plan["changes"]["deployed"]["target"] == os.path.join(dest, "T1")
    assert plan["changes"]["current"] == {"old": None, "new": "T1"}
    assert "would download T1" in plan["comment"]


def full_target(tmp_path):
    """A destination whose T1 directory holds someone else's file."""
    dest = tmp_path / "app"
    (dest / "T1").mkdir(parents=True)
    (dest / "T1" / "theirs").write_text("not ours")
    return str(dest)


def test_deployed_dry_run_reports_what_the_real_run_would_refuse(fleet, built, tmp_path):
    peer = fleet.minion("web1", destination_path=full_target(tmp_path))
    with pytest.raises(LssdError, match="unsafe_please_delete"):
        plans.plan(peer, "deployed", "T1", test=True)
    with pytest.raises(LssdError, match="owner 'no-such-user-lssd'"):
        plans.plan(fleet.minion("web2", destination_path=str(tmp_path / "b"), destination_owner="no-such-user-lssd"),
                   "deployed", "T1", test=True)


def test_deployed_plan_is_empty_when_the_build_is_installed(fleet, built, tmp_path):
    _, result = built
    dest = tmp_path / "app"
    (dest / "T1").mkdir(parents=True)
    peer = fleet.minion("web1", destination_path=str(dest))
    inventory.record(peer, "T1", {"target": str(dest / "T1"), "sha256": result["sha256"]})
    plan = plans.plan(peer, "deployed", "T1")
    assert plan["steps"] == [] and plan["comment"] == "T1 is already deployed"
    inventory.record(peer, "T1", {"target": str(dest / "T1"), "sha256": "f" * 64})
    with pytest.raises(LssdError, match="set force: True"):
        plans.plan(peer, "deployed", "T1")
    forced = plans.plan(peer, "deployed", "T1", force=True)
    assert [s["call"] for s in forced["steps"]] == ["peer"]
    assert forced["steps"][0]["kwargs"]["unsafe_please_delete"] is True
    assert forced["changes"]["sha256"] == {"old": "f" * 64, "new": result["sha256"]}


def test_a_peer_without_pillar_fails_naming_the_key(fleet, built):
    with pytest.raises(LssdError, match=r"lssd:destination_path is not set"):
        plans.plan(fleet.minion("web1"), "deployed", "T1")


def test_prune_keeps_the_newest_and_never_what_lssd_did_not_install(fleet, tmp_path):
    dest = tmp_path / "app"
    peer = fleet.minion("web1", destination_path=str(dest))
    for i, tag in enumerate(("A", "B", "C")):
        (dest / tag).mkdir(parents=True)
        inventory.record(peer, tag, {"target": str(dest / tag), "sha256": "0" * 64})
        os.utime(peer.layout.installed_record(tag), (i, i))
    (dest / "theirs").mkdir()
    planned = inventory.prune(peer, 1, newest="C", test=True)
    assert planned["remove"] and "theirs" not in planned["remove"] and "C" not in planned["remove"]
    done = inventory.prune(peer, 1, newest="C")
    assert sorted(os.listdir(dest)) == ["C", "theirs"]
    assert sorted(inventory.installed(peer)) == ["C"] and done["changed"]


def test_mine_entry_carries_the_torrent(fleet, built):
    made, result = built
    entry = fleet.mine[mine.torrent_alias("T1")]["build01"]
    with open(made.layout.torrent("T1"), "rb") as fh:
        assert base64.b64decode(entry["torrent"]) == fh.read()
    assert entry["infohash"] == result["infohash"]


def test_the_longest_tag_gets_its_ssl_torrent(fleet, tmp_path):
    """X.509 names hold 64 characters; a tag may have 128."""
    tag = "T" * 128
    made = fleet.minion("build01", seeder_files_path=make_build_tree(tmp_path / "b", data_mb=1),
                        tracker={"host": "127.0.0.1", "port": 6969})
    assert seeder.create_torrent(made, tag)["ssl"] is True


def test_with_a_master_a_peer_without_targets_trusts_no_mine_entry(fleet, built):
    peer = fleet.minion("web1", targets={})
    with pytest.raises(LssdError, match=r"lssd:targets:seeder is not set on web1"):
        deploy.lookup(peer, "T1")


def test_the_tag_all_is_reserved(fleet):
    with pytest.raises(LssdError, match="tag 'all' is reserved"):
        inventory.installed(fleet.minion("web1"), "all")


# -- app namespaces (lssd:app) ------------------------------------------------------------


def test_an_app_gets_its_own_files_and_the_default_keeps_the_old_layout(tmp_path):
    root = str(tmp_path / "lssd")
    default, app = Layout(root), Layout(root, "shop")
    # No app: the layout as it always was, so existing installs keep working.
    assert default.installed_record("T1") == os.path.join(root, "installed", "T1.json")
    assert default.run_dir("peer", "T1") == os.path.join(root, "run", "peer-T1")
    home = os.path.join(root, "apps", "shop")
    pairs = [(default.torrent("T1"), app.torrent("T1")), (default.credentials("T1"), app.credentials("T1")),
             (default.installed_record("T1"), app.installed_record("T1")), (default.lock("T1"), app.lock("T1")),
             (default.run_dir("seeder", "T1"), app.run_dir("seeder", "T1")),
             (default.run_dir("peer", "T1"), app.run_dir("peer", "T1")),
             (default.archives, app.archives), (default.downloads, app.downloads)]
    for old, new in pairs:
        assert old != new and new.startswith(home + os.sep) and not old.startswith(os.path.join(root, "apps"))
    # One tracker per minion serves every app.
    assert app.run_dir("tracker") == default.run_dir("tracker") and app.allowed == default.allowed


def test_mine_aliases_name_one_app_and_tag_pair_only():
    apps = [None, "a", "a.b", "a:b", "shop", "shop-1"]
    tags = ["T1", "a", "b", "a:b", "shop-T1", "x,y"]
    aliases = {(app, tag): mine.torrent_alias(tag, app) for app in apps for tag in tags}
    assert len(set(aliases.values())) == len(aliases)
    assert mine.torrent_alias("T1") == "lssd_torrent_T1" and mine.torrent_alias("T1", "shop") == "lssd_torrent_shop/T1"


@pytest.mark.parametrize("app, message", [
    ("a/b", r"app 'a/b' may not contain '/'"),
    ("a,b", r"app 'a,b' may not contain ','"),
    ("..", r"app '..' may not contain '..'"),
    (1.5, r"lssd:app 1.5 is a number"),
])
def test_bad_app_names_are_refused_naming_the_value(fleet, app, message):
    with pytest.raises(LssdError, match=message):
        fleet.minion("web1", app=app).layout


def test_two_apps_publish_and_install_one_tag_apart(fleet, tmp_path):
    made = {}
    for app, seed in (("a", b"first"), ("b", b"second")):
        build = make_build_tree(tmp_path / f"build-{app}", data_mb=1, seed=seed)
        seeding = fleet.minion("build01", app=app, seeder_files_path=build,
                               tracker={"host": "127.0.0.1", "port": 6969}, run_id=f"run-{app}")
        made[app] = seeder.create_torrent(seeding, "T1")
        entry = fleet.publish(seeding, "T1")
        assert (entry["app"], entry["run_id"]) == (app, f"run-{app}")
    assert made["a"]["torrent"] != made["b"]["torrent"] and made["a"]["sha256"] != made["b"]["sha256"]
    for app in ("a", "b"):
        peer = fleet.minion("web1", app=app, destination_path=str(tmp_path / app))
        assert deploy.lookup(peer, "T1")["sha256"] == made[app]["sha256"]
        inventory.record(peer, "T1", {"target": str(tmp_path / app / "T1"), "sha256": made[app]["sha256"]})
        (tmp_path / app / "T1").mkdir(parents=True)
    # The default namespace sees neither app's entry nor record.
    plain = fleet.minion("web1", destination_path=str(tmp_path / "plain"))
    assert deploy.lookup(plain, "T1", missing_ok=True)["published"] is False
    assert inventory.installed(plain) == {}
    for app in ("a", "b"):
        assert inventory.installed(fleet.minion("web1", app=app))["T1"]["sha256"] == made[app]["sha256"]



def test_grains_keep_the_default_namespace_and_add_each_app(fleet, tmp_path):
    for app in (None, "shop"):
        dest = tmp_path / (app or "plain")
        peer = fleet.minion("web1", app=app, destination_path=str(dest))
        tag = "T2" if app else "T1"
        (dest / tag).mkdir(parents=True)
        inventory.record(peer, tag, {"target": str(dest / tag), "sha256": "0" * 64})
        os.symlink(tag, dest / "current")
    opts = {"cachedir": os.path.join(fleet.root, "web1", "cache")}
    assert tag_grains.grains(opts) == {
        "lssd_tags": ["T1"], "lssd_current": "T1", "lssd_links": {str(tmp_path / "plain" / "current"): "T1"},
        "lssd_apps": {"shop": {"tags": ["T2"], "current": "T2", "links": {str(tmp_path / "shop" / "current"): "T2"}}},
    }

# -- a run's torrent ------------------------------------------------------------------------


def test_a_peer_of_a_run_takes_only_that_runs_entry_and_waits_for_it(fleet, tmp_path):
    # The orchestrate starts the peers while the seeder packs: an entry of an earlier run of
    # the same tag must not count, and the run's entry, once published, must be taken.
    build = make_build_tree(tmp_path / "build", data_mb=1)
    fleet.plan_run("run-1", "T1")
    fleet.plan_run("run-2", "T1")
    seeding = fleet.minion("build01", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969},
                           run_id="run-1")
    made = seeder.create_torrent(seeding, "T1")
    fleet.publish(seeding, "T1")
    peer = fleet.minion("web1", destination_path=str(tmp_path / "dest"), run_id="run-2", job_timeout=1)
    with pytest.raises(NotPublished, match="for run run-2.*waited 1s"):
        deploy.lookup(peer, "T1", wait=True)
    assert deploy.lookup(peer, "T1", missing_ok=True)["published"] is False
    fleet.publish(fleet.minion("build01", seeder_files_path=build, run_id="run-2"), "T1")
    found = deploy.lookup(peer, "T1", wait=True)
    assert (found["run_id"], found["sha256"]) == ("run-2", made["sha256"])


def test_the_run_channel_serves_only_the_runs_minions_and_the_runs_own_entry(fleet, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    fleet.plan_run("run-a", "T1", peer=("web1",))
    seeding = fleet.minion("build01", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969},
                           run_id="run-a")
    seeder.create_torrent(seeding, "T1")
    fleet.publish(seeding, "T1")
    # An accepted minion that is not the run's seeder publishes its own entry for the run.
    rogue = fleet.minion("web9", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969},
                         run_id="run-a")
    seeder.create_torrent(rogue, "T1")
    fleet.publish(rogue, "T1")
    alias = mine.torrent_alias("T1")
    served = fleet.minion("web1", run_id="run-a").run_pillar("run-a", fresh=True)
    assert set(served) == {"build01"} and served["build01"][alias]["run_id"] == "run-a"
    # Not a member: nothing, whatever run id its own pillar names.
    assert fleet.minion("web9", run_id="run-a").run_pillar("run-a", fresh=True) == {}
    # A member, but the seeder's entry is another run's: not served (its passkey and key).
    fleet.plan_run("run-b", "T1", peer=("web1",))
    assert fleet.minion("web1", run_id="run-b").run_pillar("run-b", fresh=True) == {}
    # A forgotten run serves nothing more.
    channel.forget(fleet.master_opts, "run-a")
    assert fleet.minion("web1", run_id="run-a").run_pillar("run-a", fresh=True) == {}


def test_the_run_channel_refuses_a_run_id_that_is_a_path(fleet):
    assert channel.serve(fleet.master_opts, "web1", {"lssd": {"run_id": "../x"}}, lambda who: {}) == {}
    assert channel.serve(fleet.master_opts, "web1", {"lssd": {"run_id": None}}, lambda who: {}) == {}
    with pytest.raises(LssdError, match="run id '../x' is not a run id"):
        channel.forget(fleet.master_opts, "../x")


def test_an_aborted_run_ends_the_wait_naming_the_reason(fleet, tmp_path):
    peer = fleet.minion("web1", destination_path=str(tmp_path / "dest"), run_id="run-3", job_timeout=600)
    mine.abort(peer, "run-3", "the seeder failed")
    started = time.monotonic()
    with pytest.raises(LssdError, match="run run-3 was aborted before the torrent of T1 .*the seeder failed"):
        deploy.lookup(peer, "T1", wait=True)
    assert time.monotonic() - started < 600
    # Another run on the same minion is not affected.
    other = fleet.minion("web1", destination_path=str(tmp_path / "dest"), run_id="run-4", job_timeout=1)
    with pytest.raises(NotPublished, match="run-4"):
        deploy.lookup(other, "T1", wait=True)


def test_abort_markers_of_long_gone_runs_are_dropped_and_current_ones_kept(fleet, tmp_path):
    peer = fleet.minion("web1", destination_path=str(tmp_path / "dest"), run_id="run-5", job_timeout=1)
    mine.abort(peer, "run-old", "the seeder failed")
    old = peer.layout.aborted("run-old")
    stale = time.time() - mine.ABORT_MARKER_SECONDS - 60
    os.utime(old, (stale, stale))
    mine.abort(peer, "run-recent", "the tracker failed")
    mine.abort(peer, "run-new", "the seeder failed")
    assert not os.path.exists(old)
    assert mine.aborted(peer, "run-recent") == "the tracker failed"
    assert mine.aborted(peer, "run-new") == "the seeder failed"


def test_a_run_id_is_a_safe_name(fleet):
    with pytest.raises(LssdError, match="lssd:run_id '../x' is not a run id"):
        fleet.minion("web1", run_id="../x").setting("run_id")


# -- rollback ------------------------------------------------------------------------------


@pytest.fixture
def releases_here(fleet, tmp_path):
    """A peer holding A, B and C (installed in that order) in its destination, current -> C."""
    dest = tmp_path / "app"
    peer = fleet.minion("web1", destination_path=str(dest), current=True)
    for i, tag in enumerate(("A", "B", "C")):
        (dest / tag).mkdir(parents=True)
        inventory.record(peer, tag, {"target": str(dest / tag), "sha256": "0" * 64})
        # record() stamps the time now; the same second would leave the order to the names.
        path = peer.layout.installed_record(tag)
        write_json_atomic(path, dict(read_json(path), installed=1000 + i))
    os.symlink("C", dest / "current")
    return peer, dest


def test_rollback_plan_goes_to_the_previous_tag_or_rollback_to(releases_here):
    peer, dest = releases_here
    plan = plans.plan(peer, "rolled_back", "lssd-current", test=True)
    assert plan["changes"] == {"current": {"old": "C", "new": "B"}}
    (step,) = plan["steps"]
    assert step["call"] == "switch_current" and step["kwargs"] == {
        "tag": "B", "destination_path": str(dest), "link": "current"}
    assert plans.plan(peer, "rolled_back", "x", rollback_to="A")["changes"]["current"]["new"] == "A"
    # Already there: nothing to do.
    assert plans.plan(peer, "rolled_back", "x", rollback_to="C")["steps"] == []
    os.unlink(dest / "current")
    os.symlink("A", dest / "current")
    with pytest.raises(LssdError, match=r"on minion web1: no tag older than A is kept in .* \(installed there: A, B, C\)"):
        plans.plan(peer, "rolled_back", "x")


def test_rollback_plan_never_downloads_and_needs_current(releases_here, fleet):
    peer, dest = releases_here
    with pytest.raises(LssdError, match=r"T-never is not installed in .* \(installed there: .*\); a rollback never downloads"):
        plans.plan(peer, "rolled_back", "x", rollback_to="T-never")
    plain = fleet.minion("web2", destination_path=str(dest))
    with pytest.raises(LssdError, match=r"on minion web2: lssd:current is not set"):
        plans.plan(plain, "rolled_back", "x")
    empty = fleet.minion("web3", destination_path=str(dest), current=True)
    with pytest.raises(LssdError, match=r"installed there: none"):
        plans.plan(empty, "rolled_back", "x")


def test_events_go_only_where_a_minion_event_bus_listens(tmp_path):
    # salt-call --local with no salt-minion running: no pull socket, so no 1 s wait per event.
    opts = {"sock_dir": str(tmp_path)}
    assert not event_bus_up(opts)
    (tmp_path / "minion_event_0123abcd_pull.ipc").touch()
    assert event_bus_up(opts)
    # TCP IPC mode has no socket file to look for: events are sent as Salt would.
    assert event_bus_up({"sock_dir": str(tmp_path / "none"), "ipc_mode": "tcp"})


def failed_events(fleet, role="peer"):
    return [(tag, data) for tag, data in fleet.events if tag.startswith(f"lssd/{role}/") and tag.endswith("/failed")]


def test_a_refusal_before_the_download_sends_the_failed_event(fleet, built, tmp_path):
    peer = fleet.minion("web1", destination_path=full_target(tmp_path))
    with pytest.raises(LssdError, match="unsafe_please_delete"):
        plans.plan(peer, "deployed", "T1", test=True)
    assert failed_events(fleet) == [], "a dry run predicts; it sends no failure"
    with pytest.raises(LssdError, match="unsafe_please_delete") as refused:
        plans.plan(peer, "deployed", "T1")
    owner = fleet.minion("web2", destination_path=str(tmp_path / "b"), destination_owner="no-such-user-lssd")
    with pytest.raises(LssdError, match="owner 'no-such-user-lssd'"):
        plans.plan(owner, "deployed", "T1")
    (first, data), (second, other) = failed_events(fleet)
    assert first == second == "lssd/peer/T1/failed"
    assert data == {"tag": "T1", "app": None, "run_id": None, "reason": str(refused.value), "refused": True}
    assert "no-such-user-lssd" in other["reason"] and other["refused"] is True


def test_a_misspelt_pillar_key_is_refused_naming_the_setting_it_misspells(fleet, built, tmp_path):
    peer = fleet.minion("web1", destination_path=str(tmp_path / "app"), destinaton_path=str(tmp_path / "meant"),
                        tracker={"host": "127.0.0.1", "prot": 1})
    with pytest.raises(LssdError, match=r"lssd:destinaton_path is not an lssd setting: did you mean "
                                        r"lssd:destination_path\?"):
        plans.plan(peer, "deployed", "T1", test=True)
    with pytest.raises(LssdError, match=r"lssd:destinaton_path .* did you mean lssd:destination_path"):
        deploy.peer(peer, "T1")
    assert "lssd:destinaton_path" in failed_events(fleet)[-1][1]["reason"]
    assert not os.path.exists(tmp_path / "app") and not os.path.exists(tmp_path / "meant")
    nested = fleet.minion("web2", destination_path=str(tmp_path / "b"), tracker={"host": "127.0.0.1", "prot": 1})
    with pytest.raises(LssdError, match=r"lssd:tracker:prot is not an lssd setting: did you mean lssd:tracker:port\?"):
        plans.plan(nested, "deployed", "T1", test=True)


def test_an_unknown_key_like_no_setting_is_warned_of_and_the_plan_goes_on(fleet, built, tmp_path, caplog):
    peer = fleet.minion("web1", destination_path=str(tmp_path / "app"), team_contact="ops@example.com")
    plan = plans.plan(peer, "deployed", "T1", test=True)
    assert plan["warnings"] == ["lssd:team_contact is not an lssd setting and is ignored (the settings: "
                                "pillar.example)"]
    assert "would download T1" in plan["comment"]
    assert "lssd:team_contact is not an lssd setting" in caplog.text
    # Stopping never depends on the pillar being right.
    assert plans.plan(fleet.minion("web2", destinaton_path="/x"), "peer_stopped", "all")["warnings"] == []


def test_a_failed_seeder_step_sends_the_seeder_failed_event(fleet, tmp_path):
    made = fleet.minion("build01", seeder_files_path=str(tmp_path / "missing"),
                        tracker={"host": "127.0.0.1", "port": 6969})
    with pytest.raises(LssdError) as failed:
        seeder.create_torrent(made, "T9")
    with pytest.raises(LssdError, match="no torrent for tag 'T9'"):
        seeder.seed_start(made, "T9", publish=False)
    (tag, data), (tag2, data2) = failed_events(fleet, "seeder")
    assert tag == tag2 == "lssd/seeder/T9/failed"
    assert data == {"tag": "T9", "app": None, "run_id": None, "step": "create_torrent", "reason": str(failed.value)}
    assert data2["step"] == "seed_start" and "no torrent for tag 'T9'" in data2["reason"]


def test_the_seeder_keeps_the_last_keep_builds_and_never_one_it_seeds(fleet, tmp_path):
    build = make_build_tree(tmp_path / "build", data_mb=1)
    made = fleet.minion("build01", seeder_files_path=build, tracker={"host": "127.0.0.1", "port": 6969}, keep=1,
                        compression="none")
    layout = made.layout

    def files_of(tag):
        return sorted(n for where in (layout.archives, layout.torrents) for n in os.listdir(where)
                      if n.startswith(tag + ".") or n.startswith(tag + "--"))

    assert seeder.create_torrent(made, "T1")["pruned"] == []
    os.makedirs(layout.downloads)
    open(os.path.join(layout.downloads, "T1.tar"), "w").close()  # a peer's download here: not the seeder's
    seeder.seed_start(made, "T1", publish=False)
    try:
        assert seeder.create_torrent(made, "T2")["pruned"] == [], "T1 is being seeded"
        assert files_of("T1") == ["T1.json", "T1.ssl", "T1.tar", "T1.torrent"]
    finally:
        seeder.seed_stop(made, "T1")
    os.utime(layout.torrent_meta("T1"), (1, 1))  # made long ago: T2 is the newer build
    assert seeder.create_torrent(made, "T3")["pruned"] == ["T2", "T1"]
    assert files_of("T1") == files_of("T2") == []
    assert files_of("T3") == ["T3.json", "T3.ssl", "T3.tar", "T3.torrent"]
    assert os.listdir(layout.downloads) == ["T1.tar"]
