"""bench/cluster.py (shared with scripts/demo) and the lab's address plan, without root or Salt."""

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import cluster  # bench/cluster.py
import lab  # bench/lab.py


def _read(path):
    with open(path) as fh:
        return json.load(fh)  # the configs are JSON, which Salt reads as YAML


def test_master_and_minion_configs_keep_every_file_below_their_root(tmp_path):
    conf = cluster.write_master(str(tmp_path / "master"), ["/srv/a", "/srv/b"], ["/srv/pillar"],
                                interface="127.0.0.1", ret_port=4606)
    assert conf == str(tmp_path / "master" / "conf")
    master = _read(os.path.join(conf, "master"))
    assert master["root_dir"] == str(tmp_path / "master")
    assert not any(os.path.isabs(master[k]) for k in ("pki_dir", "cachedir", "sock_dir", "pidfile", "log_file"))
    assert master["auto_accept"] is True
    assert master["file_roots"] == {"base": ["/srv/a", "/srv/b"]}
    assert master["pillar_roots"] == {"base": ["/srv/pillar"]}
    assert master["interface"] == "127.0.0.1" and master["ret_port"] == 4606

    conf = cluster.write_minion(str(tmp_path / "web1"), "web1", "127.0.0.1", master_port=4606)
    minion = _read(os.path.join(conf, "minion"))
    assert minion["id"] == "web1" and minion["master"] == "127.0.0.1" and minion["master_port"] == 4606
    assert minion["root_dir"] == str(tmp_path / "web1")
    assert minion["pidfile"] == "run/salt-minion.pid"


def test_pillar_gives_only_the_peers_a_destination(tmp_path):
    cluster.write_pillar(str(tmp_path), {"tag": "Demo1"}, "web*", "/x/{{ grains['id'] }}/app")
    top = (tmp_path / "top.sls").read_text()
    assert "'*':\n    - lssd\n" in top and "'web*':\n    - lssd_destination\n" in top
    assert _read(tmp_path / "lssd.sls") == {"lssd": {"tag": "Demo1"}}
    assert "destination_path: '/x/{{ grains['id'] }}/app'" in (tmp_path / "lssd_destination.sls").read_text()


def test_make_build(tmp_path):
    root = tmp_path / "build"
    files = cluster.make_build(str(root), 9)
    assets = sorted(os.listdir(root / "assets"))
    assert assets == ["blob000.bin", "blob001.bin", "blob002.bin"]
    assert sum(os.path.getsize(root / "assets" / a) for a in assets) == 9 << 20
    assert os.access(root / "bin" / "app", os.X_OK)
    assert os.readlink(root / "bin" / "start") == "app"
    assert (root / ".git" / "HEAD").exists()
    assert files == 40 + 3 + len(assets)


def test_wait_for_returns_the_value_or_names_what_it_waited_for():
    calls = []
    assert cluster.wait_for(lambda: calls.append(1) or (len(calls) > 2 and "up"), 5, "x", interval=0.01) == "up"
    with pytest.raises(TimeoutError, match="waiting for minions \\['web2'\\]"):
        cluster.wait_for(lambda: False, 0.05, lambda: "minions ['web2']", interval=0.01)


def test_stop_takes_the_whole_process_group(tmp_path):
    # A daemon-like process that leaves a child behind in its group.
    proc = cluster.start(["sh", "-c", "sleep 60 & echo $! > child; wait"], str(tmp_path / "log"),
                         cwd=str(tmp_path))
    child = int(cluster.wait_for(lambda: (tmp_path / "child").exists() and (tmp_path / "child").read_text(), 5,
                                 "the child's pid", interval=0.05))
    cluster.stop([proc], timeout=5)
    assert proc.poll() is not None
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}") or _state(child) == "Z"


def test_kill_all_stops_what_find_lists():
    proc = subprocess.Popen(["sleep", "60"])
    cluster.kill_all(lambda: [proc.pid] if proc.poll() is None else [], grace=5)
    assert proc.wait(5) is not None


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


def test_lab_addresses_stay_in_the_benchmarking_range():
    net = ipaddress.ip_network(lab.NET)
    assert lab.address(0) == "198.18.0.1"
    assert lab.address(64) == "198.18.0.65"
    assert lab.address(250) == "198.18.1.1"
    seen = {lab.address(i) for i in range(0, 250 * 512, 97)} | {lab.address(250 * 512 - 1)}
    assert all(ipaddress.ip_address(a) in net for a in seen)
    assert lab.address(250 * 512 - 1) == "198.19.255.250"
    with pytest.raises(ValueError, match="does not fit"):
        lab.address(250 * 512)


def test_framing_ceiling_per_mtu():
    assert lab.framing(1500) == pytest.approx(0.956, abs=0.001)
    assert lab.framing(9000) == pytest.approx(0.993, abs=0.001)
