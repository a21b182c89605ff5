"""The HTTP tracker: a real detached process answering real HTTP, plus the Tracker class in-process.

Attacks on the tracker (slowloris, floods, outsiders) are in tests/functional/test_tracker_abuse.py.
"""

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse

import pytest

from salt_lssd import LssdError, bencode, procs
from salt_lssd import tracker as tracker_mod
from salt_lssd.tracker import Tracker, allow, fetch_status, make_server

INFOHASH = bytes(range(20))
OTHER_INFOHASH = bytes(range(100, 120))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RunningTracker:
    def __init__(self, state_dir, run_dir, port):
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.port = port

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            conn.close()

    def get(self, path):
        status, content_type, body = self.request("GET", path)
        assert status == 200
        return content_type, body

    def announce(self, **params):
        content_type, body = self.get("/announce?" + query(**params))
        assert content_type == "text/plain"
        return bencode.decode(body)

    def scrape(self, *info_hashes):
        path = "/scrape"
        if info_hashes:
            path += "?" + urllib.parse.urlencode([("info_hash", ih) for ih in info_hashes])
        content_type, body = self.get(path)
        assert content_type == "text/plain"
        return bencode.decode(body)

    def slice(self, **params):
        content_type, body = self.get("/slice?" + slice_query(**params))
        assert content_type == "text/plain"
        return bencode.decode(body)

    def status(self):
        content_type, body = self.get("/status")
        assert content_type == "application/json"
        return json.loads(body)


def query(**params):
    """An announce query; defaults make a valid leecher on port 6881. ``None`` drops a field."""
    fields = {
        "info_hash": INFOHASH,
        "peer_id": b"-LT2110-" + b"0" * 12,
        "port": 6881,
        "uploaded": 0,
        "downloaded": 0,
        "left": 1000,
        "compact": 1,
    }
    fields.update(params)
    return urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None})


def slice_query(**params):
    """A /slice query; defaults ask for INFOHASH on port 6881. ``None`` drops a field."""
    fields = {"info_hash": INFOHASH, "port": 6881}
    fields.update(params)
    return urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None})


def peer_id(n):
    return b"-LT2110-" + b"%012d" % n


@pytest.fixture
def start_tracker(state_dir, request):
    def start(register=True, **config):
        run_dir = os.path.join(state_dir, "run", "tracker")
        port = free_port()
        config = dict({"bind": "127.0.0.1", "port": port, "state_dir": state_dir}, **config)
        if register:
            allow(state_dir, INFOHASH.hex(), "Deploy1")
        request.addfinalizer(lambda: procs.stop(run_dir))
        state = procs.spawn("tracker", run_dir, config)
        assert state["status"] == "running"
        assert state["port"] == port
        return RunningTracker(state_dir, run_dir, port)

    return start


@pytest.fixture
def running(start_tracker):
    return start_tracker()


def decode_compact(peers):
    assert len(peers) % 6 == 0
    return [
        (socket.inet_ntoa(peers[i : i + 4]), int.from_bytes(peers[i + 4 : i + 6], "big"))
        for i in range(0, len(peers), 6)
    ]


# -- malformed requests ------------------------------------------------------------------------

MALFORMED = [
    ("missing info_hash", {"info_hash": None}, ["info_hash"]),
    ("short info_hash", {"info_hash": b"\x01" * 19}, ["info_hash", "01" * 19, "19 bytes"]),
    ("long info_hash", {"info_hash": b"\x02" * 21}, ["info_hash", "02" * 21, "21 bytes"]),
    ("missing peer_id", {"peer_id": None}, ["peer_id"]),
    ("short peer_id", {"peer_id": b"abc"}, ["peer_id", "'abc'", "3 bytes"]),
    ("missing port", {"port": None}, ["port"]),
    ("non-numeric port", {"port": "http"}, ["port", "'http'"]),
    ("negative port", {"port": "-1"}, ["port", "'-1'"]),
    ("port zero", {"port": 0}, ["port", "0"]),
    ("port too big", {"port": 70000}, ["port", "70000"]),
    ("negative uploaded", {"uploaded": "-5"}, ["uploaded", "'-5'"]),
    ("non-numeric downloaded", {"downloaded": "lots"}, ["downloaded", "'lots'"]),
    ("negative left", {"left": "-1"}, ["left", "'-1'"]),
    ("fractional left", {"left": "1.5"}, ["left", "'1.5'"]),
    ("missing left", {"left": None}, ["left"]),
    ("negative numwant", {"numwant": "-3"}, ["numwant", "'-3'"]),
    ("non-numeric numwant", {"numwant": "many"}, ["numwant", "'many'"]),
    ("unknown event", {"event": "exploded"}, ["event", "'exploded'"]),
    ("bad compact", {"compact": "2"}, ["compact", "'2'"]),
]


@pytest.mark.parametrize(
    "params,expected", [pytest.param(p, e, id=i) for i, p, e in MALFORMED]
)
def test_malformed_announce_gets_failure_reason(running, params, expected):
    reason = running.announce(**params)[b"failure reason"].decode()
    for word in expected:
        assert word in reason, reason


@pytest.mark.parametrize(
    "path,expected",
    [
        pytest.param(
            "/announce?" + query() + "&info_hash=%zz", ["bad query encoding", "%zz"], id="bad-escape"
        ),
        pytest.param("/announce?" + query() + "&port=6882", ["port", "2 times"], id="duplicate-port"),
        pytest.param(
            "/favicon.ico",
            ["unknown path", "/favicon.ico", "/announce", "/scrape", "/slice", "/status"],
            id="unknown-path",
        ),
        pytest.param("/announce/?" + query(), ["unknown path", "/announce/"], id="announce-slash"),
        pytest.param("/slice/?" + slice_query(), ["unknown path", "/slice/"], id="slice-slash"),
        pytest.param(
            "/slice?" + slice_query() + "&port=6882", ["port", "2 times"], id="slice-duplicate-port"
        ),
        pytest.param("/scrape?info_hash=abc", ["info_hash", "'abc'", "3 bytes"], id="scrape-short-hash"),
    ],
)
def test_malformed_path_gets_failure_reason(running, path, expected):
    content_type, body = running.get(path)
    assert content_type == "text/plain"
    reason = bencode.decode(body)[b"failure reason"].decode()
    for word in expected:
        assert word in reason, reason


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_get_failure_reason(running, method):
    status, content_type, body = running.request(method, "/announce?" + query(), body=b"x=1")
    assert (status, content_type) == (200, "text/plain")
    reason = bencode.decode(body)[b"failure reason"].decode()
    assert method in reason and "GET" in reason


def test_head_gets_failure_headers_without_body(running):
    status, content_type, body = running.request("HEAD", "/announce?" + query())
    assert (status, content_type, body) == (200, "text/plain", b"")


def test_still_serves_after_flood_of_malformed_requests(running):
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"\x00\xff\x13BitTorrent protocol" + bytes(48),
        b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",
        b"GET /announce?info_hash=%ZZ HTTP/1.0\r\n\r\n",
        b"GET /announce HTTP/9.9\r\n\r\n",
        b"BREW /coffee HTTP/1.0\r\n\r\n",
        b"GET /announce?" + query(info_hash=b"\xff" * 20).encode() + b" HTTP/1.0\r\n\r\n",
        b"POST /announce HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    ]
    answers = []

    def hammer():
        for _ in range(15):
            for data in garbage:
                with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    chunks = []
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
                    answers.append(b"".join(chunks))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 4 * 15 * len(garbage)
    for answer in answers:
        assert b"<html" not in answer.lower() and b"Traceback" not in answer
        assert b"failure reason" in answer, answer[:200]
    assert running.announce()[b"interval"] == 10
    assert procs.state(running.run_dir)["running"]
    with open(os.path.join(running.run_dir, "log"), "rb") as fh:
        assert b"Traceback" not in fh.read()  # bad requests are answered, not logged


# -- announce ----------------------------------------------------------------------------------


def test_compact_answer_lists_other_peers_not_the_requester(running):
    first = running.announce(peer_id=peer_id(1), port=6001)
    assert first[b"peers"] == b""
    assert (first[b"interval"], first[b"min interval"]) == (10, 5)
    second = running.announce(peer_id=peer_id(2), port=6002, left=0)
    assert decode_compact(second[b"peers"]) == [("127.0.0.1", 6001)]
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    third = running.announce(peer_id=peer_id(3), port=6003)
    assert sorted(decode_compact(third[b"peers"])) == [("127.0.0.1", 6001), ("127.0.0.1", 6002)]


def test_non_compact_answer_with_and_without_peer_id(running):
    running.announce(peer_id=peer_id(1), port=6001)
    listed = running.announce(peer_id=peer_id(2), port=6002, compact=0)[b"peers"]
    assert listed == [{b"ip": b"127.0.0.1", b"port": 6001, b"peer id": peer_id(1)}]
    listed = running.announce(peer_id=peer_id(2), port=6002, compact=0, no_peer_id=1)[b"peers"]
    assert listed == [{b"ip": b"127.0.0.1", b"port": 6001}]


def test_client_supplied_ip_is_ignored(running):
    running.announce(peer_id=peer_id(1), port=6001, ip="10.9.8.7")
    peers = running.announce(peer_id=peer_id(2), port=6002)[b"peers"]
    assert decode_compact(peers) == [("127.0.0.1", 6001)]


def test_stopped_removes_peer(running):
    running.announce(peer_id=peer_id(1), port=6001)
    assert decode_compact(running.announce(peer_id=peer_id(2), port=6002)[b"peers"])
    gone = running.announce(peer_id=peer_id(1), port=6001, event="stopped")
    assert gone[b"incomplete"] == 1
    assert running.announce(peer_id=peer_id(2), port=6002)[b"peers"] == b""


def test_scrape_counts(running):
    running.announce(peer_id=peer_id(1), port=6001, event="started")
    running.announce(peer_id=peer_id(2), port=6002, event="started")
    running.announce(peer_id=peer_id(3), port=6003, left=0)  # the original seeder
    for _ in range(2):  # a repeated completed event counts once
        running.announce(peer_id=peer_id(1), port=6001, left=0, event="completed")
    files = running.scrape(INFOHASH)[b"files"]
    assert files == {INFOHASH: {b"complete": 2, b"incomplete": 1, b"downloaded": 1}}
    assert running.scrape()[b"files"] == files  # no info_hash: every torrent seen
    # Unregistered hashes are left out, registered ones are in.
    assert running.scrape(OTHER_INFOHASH, INFOHASH)[b"files"] == files


def test_unregistered_hash_is_refused_then_served_once_allowed(start_tracker):
    running = start_tracker(register=False)
    reason = running.announce()[b"failure reason"].decode()
    assert reason == f"info_hash {INFOHASH.hex()} is not registered with this tracker"
    record = allow(running.state_dir, INFOHASH.hex().upper(), "Deploy2")
    assert record["infohash"] == INFOHASH.hex() and record["changed"]
    assert allow(running.state_dir, INFOHASH.hex(), "Deploy2")["changed"] is False
    answer = running.announce()
    assert b"failure reason" not in answer and answer[b"incomplete"] == 1


@pytest.mark.parametrize("bad", ["", "00" * 19, "00" * 21, "zz" * 20, None, INFOHASH])
def test_allow_refuses_bad_hex(state_dir, bad):
    with pytest.raises(LssdError, match="info-hash") as caught:
        allow(state_dir, bad, "Deploy1")
    assert repr(bad) in str(caught.value)
    assert not os.path.exists(os.path.join(state_dir, "tracker", "allowed")) or not os.listdir(
        os.path.join(state_dir, "tracker", "allowed")
    )


def test_allow_refuses_bad_tag(state_dir):
    with pytest.raises(LssdError, match="a/b"):
        allow(state_dir, INFOHASH.hex(), "a/b")


def test_status_json(running):
    allow(running.state_dir, OTHER_INFOHASH.hex(), "Deploy0")
    running.announce(peer_id=peer_id(1), port=6001, left=0)
    running.announce(peer_id=peer_id(2), port=6002)
    status = running.status()
    assert status["interval"] == 10
    assert abs(status["started"] - time.time()) < 60
    assert status["torrents"] == {
        INFOHASH.hex(): {"tag": "Deploy1", "seeders": 1, "leechers": 1, "completed": 0, "peers": 2},
        OTHER_INFOHASH.hex(): {"tag": "Deploy0", "seeders": 0, "leechers": 0, "completed": 0, "peers": 0},
    }
    assert without_counters(fetch_status("127.0.0.1", running.port)) == without_counters(status)
    assert status["connections"]["open"] == 1  # this request
    assert status["connections"]["accepted"] >= 3


def without_counters(status):
    """/status without the connection counters, which each request changes."""
    return {k: v for k, v in status.items() if k != "connections"}


def test_fetch_status_names_url_when_nothing_listens():
    port = free_port()
    with pytest.raises(LssdError, match=f"127.0.0.1:{port}/status"):
        fetch_status("0.0.0.0", port, timeout=2)


def test_peers_expire(start_tracker):
    running = start_tracker(peer_expiry=0.5)
    running.announce(peer_id=peer_id(1), port=6001)
    assert running.status()["torrents"][INFOHASH.hex()]["peers"] == 1
    wait_for(
        lambda: running.status()["torrents"][INFOHASH.hex()]["peers"] == 0, what="peer expiry"
    )
    assert running.announce(peer_id=peer_id(2), port=6002)[b"peers"] == b""


# -- slice -------------------------------------------------------------------------------------


def test_slice_ranks_peers_in_order_of_first_ask(running):
    # Every request comes from 127.0.0.1: distinct ports on one address are distinct peers.
    assert running.slice(port=6001) == {b"rank": 0, b"peers": 1}
    assert running.slice(port=6002) == {b"rank": 1, b"peers": 2}
    assert running.slice(port=6003) == {b"rank": 2, b"peers": 3}
    # Asking again keeps the rank; the count is of every peer ranked so far.
    assert running.slice(port=6001) == {b"rank": 0, b"peers": 3}
    assert running.slice(port=6003) == {b"rank": 2, b"peers": 3}
    assert running.slice(port=6004) == {b"rank": 3, b"peers": 4}


def test_slice_needs_no_announce_and_does_not_announce(running):
    assert running.slice(port=6001) == {b"rank": 0, b"peers": 1}
    assert running.status()["torrents"][INFOHASH.hex()]["peers"] == 0
    running.announce(peer_id=peer_id(1), port=6001)
    assert running.slice(port=6001) == {b"rank": 0, b"peers": 1}


MALFORMED_SLICE = [
    ("missing info_hash", {"info_hash": None}, ["/slice is missing info_hash", "20 bytes"]),
    ("short info_hash", {"info_hash": b"\x01" * 19}, ["info_hash", "01" * 19, "19 bytes"]),
    ("long info_hash", {"info_hash": b"\x02" * 21}, ["info_hash", "02" * 21, "21 bytes"]),
    ("text info_hash", {"info_hash": "abc"}, ["info_hash", "'abc'", "3 bytes"]),
    ("unregistered info_hash", {"info_hash": OTHER_INFOHASH},
     [f"info_hash {OTHER_INFOHASH.hex()} is not registered"]),
    ("missing port", {"port": None}, ["/slice is missing port"]),
    ("non-numeric port", {"port": "http"}, ["port", "'http'", "not a non-negative integer"]),
    ("negative port", {"port": "-1"}, ["port", "'-1'"]),
    ("fractional port", {"port": "6881.5"}, ["port", "'6881.5'"]),
    ("port zero", {"port": 0}, ["port 0 is out of range", "1..65535"]),
    ("port too big", {"port": 70000}, ["port 70000 is out of range", "1..65535"]),
]


@pytest.mark.parametrize(
    "params,expected", [pytest.param(p, e, id=i) for i, p, e in MALFORMED_SLICE]
)
def test_malformed_slice_gets_failure_reason(running, params, expected):
    answer = running.slice(**params)
    assert set(answer) == {b"failure reason"}
    reason = answer[b"failure reason"].decode()
    for word in expected:
        assert word in reason, reason
    # A refused request ranks no one.
    assert running.slice(port=6001) == {b"rank": 0, b"peers": 1}


def test_slice_of_unregistered_hash_is_refused_then_served_once_allowed(start_tracker):
    running = start_tracker(register=False)
    reason = running.slice()[b"failure reason"].decode()
    assert reason == f"info_hash {INFOHASH.hex()} is not registered with this tracker"
    allow(running.state_dir, INFOHASH.hex(), "Deploy2")
    assert running.slice() == {b"rank": 0, b"peers": 1}


def test_slice_is_capped_over_http(start_tracker):
    running = start_tracker(max_peers_per_torrent=2)
    assert running.slice(port=6001)[b"rank"] == 0
    assert running.slice(port=6002)[b"rank"] == 1
    reason = running.slice(port=6003)[b"failure reason"].decode()
    assert reason == "this swarm already ranked 2 peers (max_peers_per_torrent)"
    assert running.slice(port=6002) == {b"rank": 1, b"peers": 2}


def test_port_in_use_fails_the_start(state_dir):
    run_dir = os.path.join(state_dir, "run", "tracker")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            with pytest.raises(LssdError, match=f"port {port} on 127.0.0.1 is already in use"):
                procs.spawn("tracker", run_dir, {"bind": "127.0.0.1", "port": port, "state_dir": state_dir})
        finally:
            procs.stop(run_dir)
    wait_for(lambda: not procs.state(run_dir)["running"], what="the failed tracker to exit")
    assert procs.state(run_dir)["status"] == "failed"


def test_stop_is_clean(running):
    pid = procs.stop(running.run_dir)
    assert pid is not None
    assert procs.state(running.run_dir)["status"] == "stopped"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2).close()


# -- the Tracker class, in-process -------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def core(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    return Tracker(state_dir, numwant_default=50, numwant_max=200, peer_expiry=35, clock=clock)


def announce(core, n, left=1000, ip=None, **extra):
    params = {"info_hash": INFOHASH, "peer_id": peer_id(n), "port": str(10000 + n), "left": str(left),
              "compact": "1"}
    params.update(extra)
    return bencode.decode(core.announce(params, ip or f"10.0.{n // 250}.{n % 250 + 1}"))


def test_numwant_default_and_cap(core):
    for n in range(300):
        announce(core, n)
    assert len(announce(core, 0)[b"peers"]) == 50 * 6
    assert len(announce(core, 0, numwant="10")[b"peers"]) == 10 * 6
    assert len(announce(core, 0, numwant="100000")[b"peers"]) == 200 * 6
    assert announce(core, 0, numwant="0")[b"peers"] == b""
    peers = decode_compact(announce(core, 0, numwant="200")[b"peers"])
    assert len(set(peers)) == 200 and ("10.0.0.1", 10000) not in peers


def test_seeders_are_not_given_seeders(core):
    for n in range(10):
        announce(core, n, left=0)
    for n in range(10, 15):
        announce(core, n)
    given = decode_compact(announce(core, 0, left=0, numwant="200")[b"peers"])
    assert sorted(port - 10000 for _, port in given) == list(range(10, 15))
    # A leecher gets seeders and leechers.
    given = decode_compact(announce(core, 10, numwant="200")[b"peers"])
    assert sorted(port - 10000 for _, port in given) == [n for n in range(15) if n != 10]


def test_leecher_becoming_seeder_moves(core):
    announce(core, 1)
    answer = announce(core, 1, left=0, event="completed")
    assert (answer[b"complete"], answer[b"incomplete"]) == (1, 0)
    files = bencode.decode(core.scrape([INFOHASH]))[b"files"]
    assert files[INFOHASH] == {b"complete": 1, b"incomplete": 0, b"downloaded": 1}


def test_expiry_with_clock(core, clock):
    announce(core, 1)
    clock.now += 20
    announce(core, 2)
    clock.now += 20  # peer 1 is 40 s old, peer 2 is 20 s old
    answer = announce(core, 3)
    assert [port for _, port in decode_compact(answer[b"peers"])] == [10002]
    assert answer[b"incomplete"] == 2


def test_ipv6_peers_go_to_peers6_and_mapped_ipv4_to_peers(core):
    announce(core, 1, ip="2001:db8::1")
    announce(core, 2, ip="::ffff:10.1.2.3")
    answer = announce(core, 3, ip="10.1.2.4")
    assert decode_compact(answer[b"peers"]) == [("10.1.2.3", 10002)]
    assert answer[b"peers6"] == socket.inet_pton(socket.AF_INET6, "2001:db8::1") + (10001).to_bytes(2, "big")
    listed = announce(core, 3, ip="10.1.2.4", compact="0", numwant="1", no_peer_id="1")[b"peers"]
    assert len(listed) == 1 and set(listed[0]) == {b"ip", b"port"}


def test_peers_per_torrent_are_capped(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, max_peers_per_torrent=3, clock=clock)
    for n in range(5):
        answer = announce(core, n)
    assert answer[b"incomplete"] == 3
    assert len(answer[b"peers"]) == 3 * 6  # an unrecorded peer still gets peers


def test_torrents_are_capped(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    allow(state_dir, OTHER_INFOHASH.hex(), "Deploy2")
    core = Tracker(state_dir, max_torrents=1, clock=clock)
    announce(core, 1)
    reason = announce(core, 1, info_hash=OTHER_INFOHASH)[b"failure reason"].decode()
    assert OTHER_INFOHASH.hex() in reason and "max_torrents" in reason


def ask_slice(core, port, ip="10.0.0.1", **extra):
    params = {"info_hash": INFOHASH, "port": str(port)}
    params.update(extra)
    return bencode.decode(core.slice(params, ip))


def test_slice_tells_peers_apart_by_address_and_port(core):
    assert ask_slice(core, 6001, ip="10.0.0.1") == {b"rank": 0, b"peers": 1}
    assert ask_slice(core, 6002, ip="10.0.0.1") == {b"rank": 1, b"peers": 2}
    assert ask_slice(core, 6001, ip="10.0.0.2") == {b"rank": 2, b"peers": 3}
    assert ask_slice(core, 6001, ip="2001:db8::1") == {b"rank": 3, b"peers": 4}
    # A dual-stack socket's ::ffff:a.b.c.d is the IPv4 peer a.b.c.d.
    assert ask_slice(core, 6001, ip="::ffff:10.0.0.2") == {b"rank": 2, b"peers": 4}
    for port, ip, rank in ((6002, "10.0.0.1", 1), (6001, "10.0.0.1", 0), (6001, "2001:db8::1", 3)):
        assert ask_slice(core, port, ip=ip) == {b"rank": rank, b"peers": 4}


def test_slice_ranks_are_per_torrent(core, state_dir):
    allow(state_dir, OTHER_INFOHASH.hex(), "Deploy2")
    assert ask_slice(core, 6001) == {b"rank": 0, b"peers": 1}
    assert ask_slice(core, 6002) == {b"rank": 1, b"peers": 2}
    assert ask_slice(core, 6002, info_hash=OTHER_INFOHASH) == {b"rank": 0, b"peers": 1}
    assert ask_slice(core, 6001) == {b"rank": 0, b"peers": 2}


def test_slice_ranks_survive_peer_expiry(core, clock):
    for n in (1, 2):
        announce(core, n)
        assert ask_slice(core, 10000 + n, ip=f"10.0.0.{n + 1}")[b"rank"] == n - 1
    clock.now += 40  # past peer_expiry (35 s): both peers are gone from the swarm
    core.sweep()
    assert core.status()["torrents"][INFOHASH.hex()]["peers"] == 0
    assert announce(core, 3)[b"peers"] == b""
    # The expired peers keep their ranks when they come back; a new peer never gets theirs.
    assert ask_slice(core, 10003, ip="10.0.0.4") == {b"rank": 2, b"peers": 3}
    assert ask_slice(core, 10001, ip="10.0.0.2") == {b"rank": 0, b"peers": 3}
    announce(core, 2, event="stopped")
    assert ask_slice(core, 10002, ip="10.0.0.3") == {b"rank": 1, b"peers": 3}


def test_slice_ranks_are_capped(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, max_peers_per_torrent=3, clock=clock)
    for port in (6001, 6002, 6003):
        ask_slice(core, port)
    reason = ask_slice(core, 6004)[b"failure reason"].decode()
    assert reason == "this swarm already ranked 3 peers (max_peers_per_torrent)"
    # Ranked peers still get their ranks; the count stays at the cap.
    assert ask_slice(core, 6003) == {b"rank": 2, b"peers": 3}
    assert b"failure reason" in ask_slice(core, 6004, ip="10.0.0.9")


@pytest.mark.parametrize(
    "params,ip,expected",
    [
        pytest.param({}, "nonsense", ["remote address 'nonsense' is not an IP address"], id="bad-remote"),
        pytest.param({"port": ["6001", "6002"]}, "10.0.0.1", ["port is given 2 times"], id="port-twice"),
        pytest.param({"info_hash": "\u20ac" * 20}, "10.0.0.1", ["info_hash", "not bytes"],
                     id="non-byte-hash"),
        pytest.param({"port": 6001}, "10.0.0.1", ["port", "type int", "not bytes"], id="port-not-bytes"),
    ],
)
def test_slice_refusals_in_process(core, params, ip, expected):
    params = dict({"info_hash": INFOHASH, "port": "6001"}, **params)
    reason = bencode.decode(core.slice(params, ip))[b"failure reason"].decode()
    for word in expected:
        assert word in reason, reason
    assert ask_slice(core, 6001) == {b"rank": 0, b"peers": 1}


@pytest.mark.parametrize(
    "setting", [{"interval": 0}, {"numwant_max": "many"}, {"peer_expiry": -1}, {"interval": True}]
)
def test_bad_settings_are_refused(state_dir, setting):
    name = next(iter(setting))
    with pytest.raises(LssdError, match=name):
        Tracker(state_dir, **setting)


def test_unexpected_error_is_logged_once_and_answered(core, monkeypatch, capfd):
    def explode(params, remote_ip):
        raise RuntimeError("boom")

    monkeypatch.setattr(core, "announce", explode)
    server = make_server(core, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = server.server_address[1]
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/announce?" + query())
            response = conn.getresponse()
            assert (response.status, response.getheader("Content-Type")) == (200, "text/plain")
            reason = bencode.decode(response.read())[b"failure reason"].decode()
            conn.close()
            assert "internal tracker error (RuntimeError)" in reason
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/status")
        assert json.loads(conn.getresponse().read())["torrents"]
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    err = capfd.readouterr().err
    assert err.count("RuntimeError: boom") == 1


def test_urls():
    assert tracker_mod.status_url("0.0.0.0", 8998) == "http://127.0.0.1:8998/status"
    assert tracker_mod.status_url("::", 8998) == "http://[::1]:8998/status"
    assert tracker_mod.status_url("10.1.2.3", 8998) == "http://10.1.2.3:8998/status"
    assert tracker_mod.announce_url("tracker01", 8998) == "http://tracker01:8998/announce"


# -- passkeys, per-host caps, interval, access ---------------------------------------------------

PASSKEY = "0123456789abcdef" * 2


def test_allow_with_passkey_keeps_it_private(state_dir):
    record = allow(state_dir, INFOHASH.hex(), "Deploy1", passkey=PASSKEY.upper())
    assert record["protected"] and record["changed"]
    assert os.stat(record["path"]).st_mode & 0o777 == 0o600
    assert tracker_mod.lookup(state_dir, INFOHASH.hex())["passkey"] == PASSKEY
    assert tracker_mod.registered(state_dir) == {
        INFOHASH.hex(): {"tag": "Deploy1", "infohash": INFOHASH.hex(), "protected": True}
    }
    assert allow(state_dir, INFOHASH.hex(), "Deploy1", passkey=PASSKEY)["changed"] is False
    assert allow(state_dir, INFOHASH.hex(), "Deploy1")["changed"] is True  # protection removed


@pytest.mark.parametrize("bad", ["", "abc", "zz" * 16, "0" * 130, 12345])
def test_allow_refuses_bad_passkey(state_dir, bad):
    with pytest.raises(LssdError, match="passkey .* is not 16 to 128 hexadecimal digits"):
        allow(state_dir, INFOHASH.hex(), "Deploy1", passkey=bad)


def test_new_passkey_is_accepted_and_fresh():
    first, second = tracker_mod.new_passkey(), tracker_mod.new_passkey()
    assert first != second and tracker_mod.validate_passkey(first) == first


def test_announce_and_slice_urls_come_from_one_builder():
    from salt_lssd import swarm, torrent

    url = tracker_mod.announce_url("tracker01", 8998, PASSKEY)
    assert url == f"http://tracker01:8998/announce?passkey={PASSKEY}"
    assert torrent.announce_url("tracker01", 8998, PASSKEY) == url
    sliced = f"http://tracker01:8998/slice?passkey={PASSKEY}"
    assert tracker_mod.slice_url(url) == swarm.slice_url(url) == sliced
    assert torrent.check_announce_url(url) == url
    assert tracker_mod.passkey_of(url.replace(PASSKEY, PASSKEY.upper())) == PASSKEY
    assert tracker_mod.passkey_of(tracker_mod.announce_url("tracker01", 8998)) is None
    assert tracker_mod.announce_url("::1", 1) == "http://[::1]:1/announce"


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://t:1/announce?passkey=abc", "passkey 'abc' is not 16 to 128 hexadecimal digits"),
        ("http://t:1/announce?key=" + PASSKEY, "allowed: none, or passkey=<hex>"),
        (f"http://t:1/announce?passkey={PASSKEY}&x=1", "allowed: none, or passkey=<hex>"),
        ("ftp://t:1/announce", "is not an http(s) URL"),
        ("http://t:1/scrape", "must have a path starting with /announce"),
    ],
)
def test_check_announce_url_names_what_is_wrong(url, expected):
    with pytest.raises(LssdError) as caught:
        tracker_mod.check_announce_url(url)
    assert expected in str(caught.value) and repr(url) in str(caught.value)


@pytest.fixture
def protected(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1", passkey=PASSKEY)
    return Tracker(state_dir, peer_expiry=35, clock=clock)


def test_passkey_is_needed_and_a_wrong_one_looks_like_an_unknown_hash(protected):
    assert b"failure reason" not in announce(protected, 1, left=0, passkey=PASSKEY)
    unknown = announce(protected, 2, info_hash=OTHER_INFOHASH)[b"failure reason"]
    assert unknown == f"info_hash {OTHER_INFOHASH.hex()} is not registered with this tracker".encode()
    expected = {b"failure reason": unknown.replace(OTHER_INFOHASH.hex().encode(), INFOHASH.hex().encode())}
    for passkey in (None, "", "0" * 32, PASSKEY.upper()[:-1] + "0"):
        assert announce(protected, 2, passkey=passkey) == expected
        assert ask_slice(protected, 6002, passkey=passkey) == expected
        assert bencode.decode(protected.scrape([INFOHASH], {"passkey": passkey}))[b"files"] == {}
    answer = announce(protected, 2, passkey=PASSKEY.upper())  # hex is hex in either case
    assert decode_compact(answer[b"peers"]) == [("10.0.0.2", 10001)]
    assert ask_slice(protected, 6002, passkey=PASSKEY) == {b"rank": 0, b"peers": 1}


def test_a_renewed_passkey_takes_over(protected, state_dir, clock):
    assert b"failure reason" not in announce(protected, 1, passkey=PASSKEY)
    renewed = "fedcba9876543210" * 2
    allow(state_dir, INFOHASH.hex(), "Deploy1", passkey=renewed)
    clock.now += 2  # a wrong passkey re-reads the registration at most once a second
    assert b"failure reason" not in announce(protected, 2, passkey=renewed)
    assert b"failure reason" in announce(protected, 3, passkey=PASSKEY)


def test_one_host_keeps_its_latest_peers_only(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, max_peers_per_ip=3, clock=clock)
    for n in range(10):
        clock.now += 1
        announce(core, n, ip="10.9.9.9")
    announce(core, 20, ip="10.9.9.8")
    peers = decode_compact(announce(core, 21, ip="10.9.9.7", numwant="200")[b"peers"])
    assert sorted(peers) == [("10.9.9.8", 10020)] + [("10.9.9.9", 10000 + n) for n in (7, 8, 9)]


def test_peers_overall_are_capped(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    allow(state_dir, OTHER_INFOHASH.hex(), "Deploy2")
    core = Tracker(state_dir, max_peers=5, clock=clock)
    for n in range(4):
        announce(core, n)
    for n in range(4, 8):
        answer = announce(core, n, info_hash=OTHER_INFOHASH)
    assert answer[b"incomplete"] == 1 and core.status()["peers"] == 5


@pytest.mark.parametrize("bad", [{"max_peers_per_ip": 1}, {"max_peers": 0}, {"announce_rate": 0},
                                 {"trusted_addresses": "127.0.0.1"},
                                 {"trusted_addresses": ["localhost"]}])
def test_bad_cap_settings_are_refused(state_dir, bad):
    name = next(iter(bad))
    with pytest.raises(LssdError, match=name):
        Tracker(state_dir, **bad)


def test_interval_grows_with_the_swarm_and_expiry_with_it(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, interval=10, min_interval=5, announce_rate=10, clock=clock)
    for n in range(100):  # 100 peers at 10 s: the announce_rate (10/s) exactly
        answer = announce(core, n)
    assert (answer[b"interval"], answer[b"min interval"]) == (10, 5)
    for n in range(100, 300):
        answer = announce(core, n)
    assert (answer[b"interval"], answer[b"min interval"]) == (30, 15)
    clock.now += 3 * 10 + 5 + 1  # expired at the base interval, not at the grown one
    assert announce(core, 300)[b"incomplete"] >= 200


def test_enumeration_answers_only_this_host_or_the_token(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, admin_token="t0ken" * 8, clock=clock)
    for path in (b"/status", b"/scrape"):
        body, content_type = core.handle(b"GET", path, "10.0.0.1")
        reason = bencode.decode(body)[b"failure reason"].decode()
        assert content_type == "text/plain" and "admin token" in reason and "127.0.0.1, ::1" in reason
        assert core.handle(b"GET", path, "10.0.0.1", token="wrong")[0] == body
        assert b"failure reason" not in core.handle(b"GET", path, "10.0.0.1", token="t0ken" * 8)[0]
        for trusted in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            assert b"failure reason" not in core.handle(b"GET", path, trusted)[0]
        assert b"failure reason" in core.handle(b"GET", path, "127.0.0.2")[0]
    # With info_hash, scrape is a peer's question and needs no token.
    query = urllib.parse.urlencode({"info_hash": INFOHASH}).encode()
    assert b"files" in core.handle(b"GET", b"/scrape?" + query, "10.0.0.1")[0]


def test_trickling_request_is_closed_with_a_reason(start_tracker):
    running = start_tracker(request_timeout=1)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /announce?info_hash=")
        started = time.monotonic()
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        assert time.monotonic() - started < 8
    reason = bencode.decode(b"".join(chunks).partition(b"\r\n\r\n")[2])[b"failure reason"]
    assert reason == b"request not complete within 1 s"


def test_oversized_request_gets_a_reason_not_a_reset(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /announce?" + b"x" * 100000 + b" HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reason = bencode.decode(b"".join(chunks).partition(b"\r\n\r\n")[2])[b"failure reason"]
    assert reason == b"request is over 8192 bytes"


def test_fetch_status_reads_the_token_from_the_run_directory(running):
    token = tracker_mod.read_admin_token(running.run_dir)
    assert token and os.stat(os.path.join(running.run_dir, "admin_token")).st_mode & 0o777 == 0o600
    status = fetch_status("127.0.0.1", running.port, run_dir=running.run_dir)
    assert without_counters(status) == without_counters(running.status())


def test_slice_ranks_per_host_are_capped(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    core = Tracker(state_dir, max_peers_per_ip=2, clock=clock)
    for port in range(6001, 6009):  # 4 x max_peers_per_ip: restarts on new ports included
        assert b"rank" in ask_slice(core, port, ip="10.0.0.1")
    reason = ask_slice(core, 6009, ip="10.0.0.1")[b"failure reason"].decode()
    assert reason == "this host already has 8 ranks in this swarm (4 x max_peers_per_ip)"
    assert ask_slice(core, 6001, ip="10.0.0.2") == {b"rank": 8, b"peers": 9}


def test_ipv6_tracker_answers_peers6_and_trusts_its_own_host(start_tracker):
    running = start_tracker(bind="::1")

    def get(path):
        conn = http.client.HTTPConnection("::1", running.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.getheader("Content-Type"), response.read()
        finally:
            conn.close()

    get("/announce?" + query(peer_id=peer_id(1), port=6001))
    answer = bencode.decode(get("/announce?" + query(peer_id=peer_id(2), port=6002))[1])
    assert answer[b"peers"] == b""
    assert answer[b"peers6"] == socket.inet_pton(socket.AF_INET6, "::1") + (6001).to_bytes(2, "big")
    content_type, body = get("/status")
    assert content_type == "application/json" and json.loads(body)["torrents"][INFOHASH.hex()]["peers"] == 2
    assert fetch_status("::1", running.port)["torrents"][INFOHASH.hex()]["leechers"] == 2


# -- forgetting idle registrations -------------------------------------------------------------


def registered_file(state_dir, infohash):
    return os.path.join(state_dir, "tracker", "allowed", infohash.hex())


def idle_for(state_dir, infohash, seconds):
    """Make the registration of ``infohash`` look idle for ``seconds`` (its file's mtime)."""
    then = time.time() - seconds
    os.utime(registered_file(state_dir, infohash), (then, then))


def test_an_idle_registration_is_forgotten_and_one_with_peers_never(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1", passkey="ab" * 8)
    allow(state_dir, OTHER_INFOHASH.hex(), "Deploy0", passkey="cd" * 8)
    core = Tracker(state_dir, peer_expiry=35, forget_after=60, clock=clock)
    announce(core, 1, passkey="ab" * 8)
    idle_for(state_dir, INFOHASH, 3600)
    idle_for(state_dir, OTHER_INFOHASH, 3600)
    assert core.forget_idle() == [OTHER_INFOHASH.hex()]
    assert not os.path.exists(registered_file(state_dir, OTHER_INFOHASH)), "its passkey is still on disk"
    assert list(core.status()["torrents"]) == [INFOHASH.hex()]
    assert b"not registered" in core.announce({"info_hash": OTHER_INFOHASH, "peer_id": peer_id(2), "port": "6002",
                                               "left": "1", "passkey": "cd" * 8}, "10.0.0.9")
    # The torrent with a live peer is marked active, not forgotten; once its peer is gone
    # for forget_after, it goes too.
    assert time.time() - os.stat(registered_file(state_dir, INFOHASH)).st_mtime < 60
    announce(core, 1, passkey="ab" * 8, event="stopped")
    clock.now += 10
    assert core.forget_idle() == []
    idle_for(state_dir, INFOHASH, 61)
    clock.now += 10
    assert core.forget_idle() == [INFOHASH.hex()]
    assert core.status()["torrents"] == {}


def test_registering_again_restarts_the_idle_time(state_dir, clock):
    allow(state_dir, INFOHASH.hex(), "Deploy1")
    idle_for(state_dir, INFOHASH, 3600)
    assert allow(state_dir, INFOHASH.hex(), "Deploy1")["changed"] is False
    core = Tracker(state_dir, forget_after=60, clock=clock)
    assert core.forget_idle() == [] and INFOHASH.hex() in core.status()["torrents"]


def test_a_restarted_tracker_forgets_what_was_idle_before_it_stopped(start_tracker, state_dir):
    allow(state_dir, OTHER_INFOHASH.hex(), "Deploy0")
    idle_for(state_dir, OTHER_INFOHASH, 7200)  # a tag deployed two hours ago
    running = start_tracker(forget_after=3600)  # registers INFOHASH now
    torrents = running.status()["torrents"]
    assert list(torrents) == [INFOHASH.hex()], torrents
    assert not os.path.exists(registered_file(state_dir, OTHER_INFOHASH))


def test_forget_after_is_checked():
    with pytest.raises(LssdError, match=r"forget_after=0 must be a number of seconds > 0"):
        Tracker("/nonexistent", forget_after=0)
