"""Only the deploy's hosts take part: attacks by a host on the same network.

The attacker here knows everything but the deploy's certificate: the info-hash, the
seeder's port, even the whole .torrent. It runs a real libtorrent session (a standard
client) and a raw BitTorrent handshake against the seeder, while a targeted peer downloads.
A peer's copy of the deploy's key does not outlive its download process.
"""

import os
import signal
import socket
import threading
import time

import libtorrent as lt
import pytest
from lssd_testutil import make_build_tree
from salt.exceptions import CommandExecutionError
from salt_lssd import procs

TAG = "Locked1"


@pytest.fixture
def seeding(make_minion, tmp_path, tracker_port):
    tracker = make_minion("tracker")
    seeder = make_minion("seeder", seeder_files_path=make_build_tree(tmp_path / "build", data_mb=4))
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    made = seeder.modules.lssd.create_torrent(TAG)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    started = seeder.modules.lssd.seed_start(TAG)
    yield tracker, seeder, made, started["port"]
    seeder.modules.lssd.seed_stop()
    tracker.modules.lssd.tracker_stop()


def test_the_torrent_is_an_ssl_torrent_with_a_passkey(seeding):
    _, _, made, _ = seeding
    with open(made["torrent"], "rb") as fh:
        info = lt.torrent_info(lt.bdecode(fh.read()))
    assert info.ssl_cert().startswith("-----BEGIN CERTIFICATE-----")
    assert "?passkey=" in next(iter(info.trackers())).url
    # ... and only there: what the job returns (job cache, orchestrate output) has none.
    assert "passkey" not in str(made)


def outsider(torrent, save_path, port):
    """A standard libtorrent client holding the .torrent but no certificate, aimed at ``port``."""
    ses = lt.session({"listen_interfaces": "127.0.0.1:0,127.0.0.1:0s", "enable_dht": False, "enable_lsd": False,
                      "enable_upnp": False, "enable_natpmp": False, "enable_incoming_utp": False,
                      "enable_outgoing_utp": False, "allow_multiple_connections_per_ip": True})
    with open(torrent, "rb") as fh:
        handle = ses.add_torrent({"ti": lt.torrent_info(lt.bdecode(fh.read())), "save_path": str(save_path)})
    handle.connect_peer(("127.0.0.1", port))
    return ses, handle


def test_an_outsider_with_the_torrent_gets_no_piece_while_a_peer_does(seeding, make_minion, tmp_path):
    _, _, made, port = seeding
    ses, handle = outsider(made["torrent"], tmp_path / "stolen", port)
    peer = make_minion("peer")
    summary = peer.modules.lssd.peer(TAG, destination_path=str(tmp_path / "dest"), torrent=made["torrent"], linger=1)
    assert summary["bytes"] == made["size"]
    # The peer finished in the time the outsider had; give it a few more seconds of trying.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        handle.connect_peer(("127.0.0.1", port))
        assert handle.status().total_done == 0, "the outsider received data from the seeder"
        time.sleep(0.5)
    del ses


def test_a_plain_bittorrent_handshake_to_the_seeder_is_not_answered(seeding):
    _, _, made, port = seeding
    info_hash = bytes.fromhex(made["infohash"])
    hello = b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-XX0001-" + bytes(12)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(hello)
        conn.settimeout(10)
        try:
            answer = conn.recv(68)
        except (ConnectionResetError, socket.timeout):
            answer = b""
    assert info_hash not in answer, "the seeder answered a plain handshake for its info-hash"


def run_dir(peer):
    state_dir = peer.opts["lssd"].get("state_dir") or os.path.join(peer.opts["cachedir"], "lssd")
    return os.path.join(state_dir, "run", f"peer-{TAG}")


def key_files(peer):
    return sorted(name for name in os.listdir(run_dir(peer)) if name.startswith("ssl-"))


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.1)


def test_the_peers_key_is_removed_when_its_process_stops_or_ends_lingering(seeding, make_minion, tmp_path):
    _, _, made, _ = seeding
    peer = make_minion("peer")
    peer.modules.lssd.peer(TAG, destination_path=str(tmp_path / "dest"), torrent=made["torrent"], linger=600)
    # Lingering, it still serves the swarm over TLS: the key is there while it runs ...
    assert key_files(peer) == ["ssl-cert.pem", "ssl-dh.pem", "ssl-key.pem"]
    peer.modules.lssd.peer_stop(TAG)
    assert key_files(peer) == []  # ... and gone once it is stopped,
    other = make_minion("other")
    other.modules.lssd.peer(TAG, destination_path=str(tmp_path / "other"), torrent=made["torrent"], linger=1)
    wait_for(lambda: procs.pid_of(run_dir(other)) is None, 60, "the end of lingering")
    assert key_files(other) == []  # ... or once its lingering ends.


@pytest.fixture
def unseeded(make_minion, tmp_path, tracker_port):
    """A registered SSL torrent nobody seeds: a download of it never completes."""
    tracker = make_minion("tracker")
    seeder = make_minion("seeder", seeder_files_path=make_build_tree(tmp_path / "build", data_mb=1))
    tracker.modules.lssd.tracker_start(port=tracker_port, bind="127.0.0.1")
    made = seeder.modules.lssd.create_torrent(TAG)
    tracker.modules.lssd.tracker_allow(made["torrent"])
    yield made
    tracker.modules.lssd.tracker_stop()


def test_the_peers_key_is_removed_when_its_download_fails(unseeded, make_minion, tmp_path):
    peer = make_minion("peer")
    with pytest.raises(CommandExecutionError, match=r"did not complete within 2s"):
        peer.modules.lssd.peer(TAG, destination_path=str(tmp_path / "dest"), torrent=unseeded["torrent"], timeout=2)
    assert key_files(peer) == []


def test_the_peers_key_is_removed_when_its_download_process_is_killed(unseeded, make_minion, tmp_path):
    peer = make_minion("peer")
    failed = []

    def deploy():
        try:
            peer.modules.lssd.peer(TAG, destination_path=str(tmp_path / "dest"), torrent=unseeded["torrent"],
                                   timeout=600)
        except CommandExecutionError as exc:
            failed.append(str(exc))

    job = threading.Thread(target=deploy)
    job.start()
    wait_for(lambda: procs.state(run_dir(peer)).get("status") == "downloading", 60, "the download's start")
    assert "ssl-key.pem" in key_files(peer)
    os.kill(procs.pid_of(run_dir(peer)), signal.SIGKILL)  # it cannot remove anything itself
    job.join(120)
    assert not job.is_alive() and failed and "killed by SIGKILL" in failed[0], failed
    assert key_files(peer) == [], failed
