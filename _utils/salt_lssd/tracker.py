"""The HTTP BitTorrent tracker: the detached process that tells peers of a deploy about each other.

It speaks announce (BEP 3) with compact peer lists (BEP 23, ``peers6`` per BEP 7), scrape
(BEP 48), a JSON ``/status`` page and ``/slice`` (each peer's rank, for swarm.py's piece
slices), and serves only the info-hashes registered with
:func:`allow` (one file per info-hash under ``Layout(state_dir).allowed``), so it is no open
tracker for whatever else runs in the datacenter. The protocol logic is the :class:`Tracker`
class, testable without sockets; :func:`run` wraps it in a threaded HTTP server for
``python -m salt_lssd tracker RUN_DIR``. It is strict: every bad request gets a bencoded
``failure reason`` naming the bad field and value, never HTML or a traceback. Work per announce is
constant and memory is bounded (peers per torrent, torrents per tracker), because a whole fleet
announces at once and keeps announcing every ``interval`` seconds.
"""

import errno
import http.client
import http.server
import ipaddress
import json
import os
import random
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict

from salt_lssd import LssdError, __version__, bencode
from salt_lssd.common import Layout, read_json, validate_tag, write_json_atomic
from salt_lssd.torrent import announce_url, url_host

DEFAULT_BIND = "0.0.0.0"
DEFAULT_PORT = 8998
# Deploys last minutes, not days: peers must learn of each other quickly, unlike the 30 minutes
# public trackers ask for.
DEFAULT_INTERVAL = 10
DEFAULT_MIN_INTERVAL = 5
DEFAULT_NUMWANT = 50
DEFAULT_NUMWANT_MAX = 200
# Bounds on memory: a swarm beyond this many peers gets answers but is not recorded further.
DEFAULT_MAX_PEERS_PER_TORRENT = 20000
DEFAULT_MAX_TORRENTS = 1000
# A peer that missed this many announces in a row is gone (crashed, unplugged).
_EXPIRY_INTERVALS = 3
_EXPIRY_SLACK = 5

_EVENTS = ("", "started", "completed", "stopped", "paused")  # paused: BEP 21, libtorrent sends it
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_UINT = re.compile(rb"[0-9]{1,20}")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_TEXT = "text/plain"
_JSON = "application/json"
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


class _Refused(Exception):
    """A request the tracker answers with a bencoded failure reason (the message)."""


def failure(reason):
    """The bencoded answer to a request the tracker refuses."""
    return bencode.encode({"failure reason": reason})


# -- registration ------------------------------------------------------------------------------


def validate_infohash(infohash_hex):
    """Return ``infohash_hex`` in lower case if it is 40 hex digits, else raise LssdError."""
    if not isinstance(infohash_hex, str) or not _HEX40.fullmatch(infohash_hex):
        raise LssdError(
            f"info-hash {infohash_hex!r} is not 40 hexadecimal digits "
            "(the SHA-1 info-hash of a torrent, as create_torrent returns it)"
        )
    return infohash_hex.lower()


def allow(state_dir, infohash_hex, tag):
    """Register a torrent with the tracker serving ``state_dir``; a running tracker serves it
    from its next announce on. Returns ``{"infohash", "tag", "path", "changed"}``; ``changed`` is
    False when the same registration was already there."""
    infohash = validate_infohash(infohash_hex)
    validate_tag(tag)
    path = os.path.join(Layout(state_dir).allowed, infohash)
    record = {"tag": tag, "infohash": infohash}
    changed = read_json(path) != record
    if changed:
        write_json_atomic(path, record)
    return dict(record, path=path, changed=changed)


def registered(state_dir):
    """``{infohash hex: {"tag", "infohash"}}`` for every torrent registered under ``state_dir``."""
    directory = Layout(state_dir).allowed
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        if _HEX40.fullmatch(name) and name == name.lower():  # skips write_json_atomic's temps
            record = read_json(os.path.join(directory, name), default={}) or {}
            found[name] = {"tag": record.get("tag"), "infohash": name}
    return found


# -- the protocol, without sockets -------------------------------------------------------------


class _Peer:
    __slots__ = (
        "compact", "completed", "ip", "key", "last_seen", "peer_id", "port", "seeder", "slot", "v6"
    )

    def __init__(self, key, peer_id, ip, port, now):
        self.key = key
        self.peer_id = peer_id
        self.ip = str(ip)
        self.port = port
        self.v6 = ip.version == 6
        self.compact = ip.packed + port.to_bytes(2, "big")  # BEP 23 / BEP 7 entry
        self.seeder = False
        self.last_seen = now
        self.completed = False
        self.slot = -1  # index in its swarm's seeder or leecher list


class _PeerList:
    """A list with O(1) add, remove and random access, for sampling peers in constant time."""

    __slots__ = ("items",)

    def __init__(self):
        self.items = []

    def add(self, peer):
        peer.slot = len(self.items)
        self.items.append(peer)

    def remove(self, peer):
        last = self.items.pop()
        if last is not peer:
            self.items[peer.slot] = last
            last.slot = peer.slot
        peer.slot = -1


class _Swarm:
    """The peers of one torrent: ordered by last announce, so expiry looks at the oldest only."""

    __slots__ = ("completed", "leechers", "peers", "ranks", "seeders")

    def __init__(self):
        self.peers = OrderedDict()  # (ip packed, port) -> _Peer, least recently seen first
        self.seeders = _PeerList()
        self.leechers = _PeerList()
        self.completed = 0
        # (ip packed, port) -> rank, in the order peers asked for a slice (see Tracker.slice);
        # kept after peers expire, so a rank is never handed out twice.
        self.ranks = {}

    def add(self, peer, seeder):
        self.peers[peer.key] = peer
        peer.seeder = seeder
        (self.seeders if seeder else self.leechers).add(peer)

    def remove(self, peer):
        del self.peers[peer.key]
        (self.seeders if peer.seeder else self.leechers).remove(peer)

    def touch(self, peer, seeder, now):
        self.peers.move_to_end(peer.key)
        peer.last_seen = now
        if peer.seeder != seeder:
            (self.seeders if peer.seeder else self.leechers).remove(peer)
            peer.seeder = seeder
            (self.seeders if seeder else self.leechers).add(peer)

    def expire(self, before):
        # Each peer is expired once, so this is constant amortised work per announce.
        while self.peers:
            oldest = next(iter(self.peers.values()))
            if oldest.last_seen >= before:
                break
            self.remove(oldest)

    def sample(self, count, for_seeder, key, peer_id):
        """Up to ``count`` random peers, never the requester; a seeder gets leechers only."""
        pools = (self.leechers.items,) if for_seeder else (self.leechers.items, self.seeders.items)
        total = sum(len(pool) for pool in pools)
        if count <= 0 or total == 0:
            return []
        chosen = []
        # One spare, so dropping the requester still leaves ``count``; random.sample over a
        # range costs O(k), not O(swarm).
        for index in random.sample(range(total), min(total, count + 1)):
            for pool in pools:
                if index < len(pool):
                    peer = pool[index]
                    break
                index -= len(pool)
            if peer.key == key or peer.peer_id == peer_id:
                continue
            chosen.append(peer)
            if len(chosen) == count:
                break
        return chosen


def _show(value, limit=64):
    """A bad value as a failure reason quotes it: text as text, binary as hex."""
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    cut = value[:limit]
    more = "..." if len(value) > limit else ""
    if all(32 <= b < 127 for b in cut):
        return repr(cut.decode("ascii")) + more
    return "hex " + cut.hex() + more


def _int_setting(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LssdError(f"tracker setting {name}={value!r} must be an integer >= {minimum}")
    return value


class Tracker:
    """Announce, scrape and status, for the torrents registered under ``state_dir``.

    Thread-safe: the HTTP server calls it from one thread per request. ``clock`` (seconds,
    monotonic) is for tests.
    """

    def __init__(
        self,
        state_dir,
        interval=DEFAULT_INTERVAL,
        min_interval=DEFAULT_MIN_INTERVAL,
        numwant_default=DEFAULT_NUMWANT,
        numwant_max=DEFAULT_NUMWANT_MAX,
        peer_expiry=None,
        max_peers_per_torrent=DEFAULT_MAX_PEERS_PER_TORRENT,
        max_torrents=DEFAULT_MAX_TORRENTS,
        clock=time.monotonic,
    ):
        if not isinstance(state_dir, str) or not state_dir:
            raise LssdError(f"tracker setting state_dir={state_dir!r} must be a directory path")
        self.state_dir = state_dir
        self.interval = _int_setting("interval", interval, 1)
        self.min_interval = _int_setting("min_interval", min_interval, 0)
        self.numwant_max = _int_setting("numwant_max", numwant_max, 1)
        self.numwant_default = min(_int_setting("numwant_default", numwant_default, 0), numwant_max)
        if peer_expiry is None:
            peer_expiry = _EXPIRY_INTERVALS * self.interval + _EXPIRY_SLACK
        if isinstance(peer_expiry, bool) or not isinstance(peer_expiry, (int, float)) or peer_expiry <= 0:
            raise LssdError(f"tracker setting peer_expiry={peer_expiry!r} must be a number of seconds > 0")
        self.peer_expiry = peer_expiry
        self.max_peers_per_torrent = _int_setting("max_peers_per_torrent", max_peers_per_torrent, 1)
        self.max_torrents = _int_setting("max_torrents", max_torrents, 1)
        self.started = time.time()
        self._allowed_dir = Layout(state_dir).allowed
        self._clock = clock
        self._lock = threading.Lock()
        # Known info-hashes: raw 20 bytes -> _Swarm. A hash is looked up on disk only until
        # it is known, so a flood of announces costs no file system work.
        self._swarms = {}

    # -- requests --

    def announce(self, params, remote_ip):
        """Answer an announce (BEP 3); ``params`` maps names to raw values (bytes, or str holding
        one byte per character; a list of them when a name came several times)."""
        try:
            return self._announce(params, remote_ip)
        except _Refused as exc:
            return failure(str(exc))

    def scrape(self, info_hashes=None):
        """Answer a scrape (BEP 48) for ``info_hashes`` (raw), or for every torrent seen."""
        try:
            return self._scrape(info_hashes)
        except _Refused as exc:
            return failure(str(exc))

    def slice(self, params, remote_ip):
        """Answer ``/slice``: this peer's rank in the swarm and how many peers have one so far.

        Not part of BitTorrent: our peers ask it so that each starts on its own part of the
        piece space (swarm.py, ``_PeerLoop.update_slice``) and the seeder's first copy of each
        piece goes to one peer only. A peer is known by its address and listening ``port``;
        ranks are 0, 1, 2, ... in the order peers first ask, and stay the same when asked again.
        """
        try:
            info_hash = _binary(params, "info_hash", 20, "the torrent's SHA-1 info-hash", "/slice")
            port = _port(params, "/slice")
            key = (_address(remote_ip).packed, port)
            swarm = self._swarm(info_hash)
            with self._lock:
                rank = swarm.ranks.get(key)
                if rank is None:
                    if len(swarm.ranks) >= self.max_peers_per_torrent:
                        raise _Refused(
                            f"this swarm already ranked {self.max_peers_per_torrent} peers "
                            "(max_peers_per_torrent)"
                        )
                    rank = swarm.ranks[key] = len(swarm.ranks)
                return bencode.encode({"rank": rank, "peers": len(swarm.ranks)})
        except _Refused as exc:
            return failure(str(exc))

    def status(self):
        """What the tracker serves, JSON-able: registered torrents with their swarm counts."""
        before = self._clock() - self.peer_expiry
        counts = {}
        with self._lock:
            for info_hash, swarm in self._swarms.items():
                swarm.expire(before)
                counts[info_hash.hex()] = (
                    len(swarm.seeders.items), len(swarm.leechers.items), swarm.completed
                )
        torrents = {}
        records = registered(self.state_dir)
        for infohash in set(records) | set(counts):
            seeders, leechers, completed = counts.get(infohash, (0, 0, 0))
            torrents[infohash] = {
                "tag": records.get(infohash, {}).get("tag"),
                "seeders": seeders,
                "leechers": leechers,
                "completed": completed,
                "peers": seeders + leechers,
            }
        return {"torrents": torrents, "started": self.started, "interval": self.interval}

    def sweep(self):
        """Drop expired peers of every swarm, also those nobody announces to any more."""
        before = self._clock() - self.peer_expiry
        with self._lock:
            for swarm in self._swarms.values():
                swarm.expire(before)

    # -- internals --

    def _announce(self, params, remote_ip):
        info_hash = _binary(params, "info_hash", 20, "the torrent's SHA-1 info-hash")
        peer_id = _binary(params, "peer_id", 20, "the client's peer id")
        port = _port(params, "announce")
        _uint(params, "uploaded")
        _uint(params, "downloaded")
        left = _uint(params, "left", required=True)
        event = _value(params, "event")
        event = "" if event is None else event.decode("latin-1")
        if event not in _EVENTS:
            raise _Refused(
                f"event {_show(event)} is unknown; it must be started, completed, stopped, "
                "paused or empty"
            )
        compact = _flag(params, "compact")
        no_peer_id = _flag(params, "no_peer_id")
        numwant = _uint(params, "numwant")
        numwant = self.numwant_default if numwant is None else min(numwant, self.numwant_max)
        # The client's own ``ip`` parameter is ignored: any host could claim any address.
        ip = _address(remote_ip)
        swarm = self._swarm(info_hash)

        seeder = left == 0
        key = (ip.packed, port)
        now = self._clock()
        with self._lock:
            swarm.expire(now - self.peer_expiry)
            peer = swarm.peers.get(key)
            if event == "stopped":
                if peer is not None:
                    swarm.remove(peer)
                chosen = []
            else:
                if peer is None:
                    # A full swarm still answers, but records no one new: established peers
                    # stay, and memory stays bounded.
                    if len(swarm.peers) < self.max_peers_per_torrent:
                        peer = _Peer(key, peer_id, ip, port, now)
                        swarm.add(peer, seeder)
                else:
                    peer.peer_id = peer_id
                    swarm.touch(peer, seeder, now)
                if event == "completed" and peer is not None and not peer.completed:
                    peer.completed = True
                    swarm.completed += 1
                chosen = [
                    (p.v6, p.compact, p.ip, p.port, p.peer_id)
                    for p in swarm.sample(numwant, seeder, key, peer_id)
                ]
            complete, incomplete = len(swarm.seeders.items), len(swarm.leechers.items)

        answer = {
            "interval": self.interval,
            "min interval": self.min_interval,
            "complete": complete,
            "incomplete": incomplete,
        }
        if compact:
            answer["peers"] = b"".join(c for v6, c, _, _, _ in chosen if not v6)
            peers6 = b"".join(c for v6, c, _, _, _ in chosen if v6)
            if peers6:
                answer["peers6"] = peers6
        else:
            answer["peers"] = [
                {"ip": ip_s, "port": port_n} if no_peer_id
                else {"ip": ip_s, "port": port_n, "peer id": pid}
                for _, _, ip_s, port_n, pid in chosen
            ]
        return bencode.encode(answer)

    def _scrape(self, info_hashes):
        files = {}
        if info_hashes:
            for raw in info_hashes:
                info_hash = _raw(raw, "info_hash")
                if len(info_hash) != 20:
                    raise _Refused(
                        f"info_hash {_show(info_hash)} is {len(info_hash)} bytes long; it must "
                        "be exactly 20 bytes"
                    )
                try:
                    self._swarm(info_hash)
                except _Refused:
                    continue  # BEP 48: unknown torrents are left out of ``files``
                files[info_hash] = None
            wanted = list(files)
        else:
            wanted = None
        before = self._clock() - self.peer_expiry
        with self._lock:
            for info_hash in wanted if wanted is not None else list(self._swarms):
                swarm = self._swarms[info_hash]
                swarm.expire(before)
                files[info_hash] = {
                    "complete": len(swarm.seeders.items),
                    "incomplete": len(swarm.leechers.items),
                    "downloaded": swarm.completed,
                }
        return bencode.encode(
            {"files": files, "flags": {"min_request_interval": self.min_interval}}
        )

    def _swarm(self, info_hash):
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            return swarm
        infohash_hex = info_hash.hex()
        if not os.path.exists(os.path.join(self._allowed_dir, infohash_hex)):
            raise _Refused(f"info_hash {infohash_hex} is not registered with this tracker")
        with self._lock:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                if len(self._swarms) >= self.max_torrents:
                    raise _Refused(
                        f"info_hash {infohash_hex} is registered, but this tracker already "
                        f"serves {self.max_torrents} torrents (max_torrents)"
                    )
                swarm = self._swarms[info_hash] = _Swarm()
            return swarm


def _raw(value, name):
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Refused(f"{name} {value!r} holds characters that are not bytes") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise _Refused(f"{name} has a value of type {type(value).__name__}, not bytes")


def _value(params, name):
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _Refused(f"{name} is given {len(value)} times; give it once")
        value = value[0]
    return _raw(value, name)


def _binary(params, name, length, what, request="announce"):
    value = _value(params, name)
    if value is None:
        raise _Refused(f"{request} is missing {name} ({what}, {length} bytes, URL-encoded)")
    if len(value) != length:
        raise _Refused(
            f"{name} {_show(value)} is {len(value)} bytes long; it must be exactly {length} bytes"
        )
    return value


def _uint(params, name, required=False, request="announce"):
    value = _value(params, name)
    if value is None:
        if required:
            raise _Refused(f"{request} is missing {name}")
        return None
    if not _UINT.fullmatch(value):
        raise _Refused(f"{name} {_show(value)} is not a non-negative integer")
    return int(value)


def _port(params, request):
    port = _uint(params, "port", required=True, request=request)
    if not 1 <= port <= 65535:
        raise _Refused(f"port {port} is out of range; it must be 1..65535")
    return port


def _flag(params, name):
    value = _value(params, name)
    if value in (None, b"", b"0"):
        return False
    if value == b"1":
        return True
    raise _Refused(f"{name} {_show(value)} must be 0 or 1")


def _address(remote_ip):
    try:
        ip = ipaddress.ip_address(remote_ip)
    except ValueError:
        raise _Refused(f"remote address {remote_ip!r} is not an IP address") from None
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; they belong in ``peers``.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


def parse_query(query):
    """``{name: [raw value, ...]}`` from a URL query string.

    ``query`` comes from the request line, which http.server decodes as latin-1: encoding it
    back gives the bytes on the wire, so a binary info_hash survives percent-decoding.
    """
    try:
        raw = query.encode("latin-1")
    except UnicodeEncodeError:
        raise _Refused(f"bad query encoding: {query[:64]!r} holds characters that are not bytes") from None
    params = {}
    for piece in raw.split(b"&"):
        if not piece:
            continue
        if _BAD_ESCAPE.search(piece):
            raise _Refused(
                f"bad query encoding: {_show(piece)} has a '%' not followed by two hex digits"
            )
        name, _, value = piece.partition(b"=")
        name = urllib.parse.unquote_to_bytes(name.replace(b"+", b" "))
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused(f"bad query encoding: parameter name {_show(name)} is not ASCII") from None
        params.setdefault(name, []).append(urllib.parse.unquote_to_bytes(value.replace(b"+", b" ")))
    return params


# -- HTTP --------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a fleet's announces never pin threads.
    protocol_version = "HTTP/1.0"
    server_version = f"salt-lssd-tracker/{__version__}"
    sys_version = ""
    timeout = 10  # a client that stalls mid-request loses its thread after this many seconds

    def do_GET(self):
        try:
            body, content_type = self._route()
        except Exception as exc:  # noqa: BLE001 -- the tracker keeps serving; the log says why
            self.server.log_unexpected(exc)
            body, content_type = failure(
                f"internal tracker error ({type(exc).__name__}); see the tracker's log"
            ), _TEXT
        self._reply(body, content_type)

    def do_HEAD(self):
        self._refuse_method()

    def do_POST(self):
        # Read what was sent first: closing on unread data resets the connection, and the
        # client would see that instead of the answer.
        try:
            length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
            if length > 0:
                self.rfile.read(length)
        except (ValueError, OSError):
            pass
        self._refuse_method()

    def _refuse_method(self):
        self._reply(
            failure(f"HTTP method {self.command} is not supported; a tracker answers GET"), _TEXT
        )

    def _route(self):
        path, _, query = self.path.partition("?")
        try:
            if path == "/announce":
                return self.server.tracker.announce(parse_query(query), self.client_address[0]), _TEXT
            if path == "/scrape":
                params = parse_query(query)
                return self.server.tracker.scrape(params.get("info_hash")), _TEXT
            if path == "/slice":
                return self.server.tracker.slice(parse_query(query), self.client_address[0]), _TEXT
            if path == "/status":
                return json.dumps(self.server.tracker.status(), sort_keys=True).encode(), _JSON
            raise _Refused(
                f"unknown path {_show(path)}; this tracker answers /announce, /scrape, /slice "
                "and /status"
            )
        except _Refused as exc:
            return failure(str(exc)), _TEXT

    def send_error(self, code, message=None, explain=None):
        # http.server calls this for what it cannot parse and for methods with no do_*; a
        # tracker client must get a bencoded reason, not an HTML page.
        if code == 501:
            reason = f"HTTP method {_show(self.command or '')} is not supported; a tracker answers GET"
        else:
            reason = f"bad HTTP request ({code}): {message or 'unparseable'}"
        self.close_connection = True
        try:
            self._reply(failure(reason), _TEXT)
        except OSError:
            pass

    def _reply(self, body, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):  # http.server's signature
        pass  # one line per announce of a whole fleet is noise, not a log


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    # A whole fleet announces within the same second; the kernel caps this at somaxconn.
    request_queue_size = 1024
    allow_reuse_address = True  # on Linux this still refuses a port someone listens on

    def __init__(self, address, tracker):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tracker = tracker
        self._logged = set()
        self._log_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 peers as well, whatever the system default is.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        # Not HTTPServer.server_bind: its getfqdn() is a reverse DNS lookup that can hang.
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to fix here
        self.log_unexpected(exc)

    def log_unexpected(self, exc):
        """Log an unexpected exception's traceback once per kind, not once per request."""
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        kind = (type(exc).__name__, str(exc)[:200], tuple((f.filename, f.lineno) for f in where))
        with self._log_lock:
            if kind in self._logged or len(self._logged) >= 100:
                return
            self._logged.add(kind)
        sys.stderr.write(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} tracker: unexpected error (logged once):\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        sys.stderr.flush()


def make_server(tracker, bind=DEFAULT_BIND, port=DEFAULT_PORT):
    """A threaded HTTP server for ``tracker``, bound and listening (port 0: any free port)."""
    try:
        return _Server((bind.strip("[]"), port), tracker)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LssdError(
                f"tracker port {port} on {bind} is already in use (another tracker or service "
                "listens there); stop it or choose another port (pillar lssd:tracker:port)"
            ) from None
        raise LssdError(
            f"tracker cannot listen on {bind} port {port}: {exc.strerror or exc}"
        ) from None


# -- the detached process ----------------------------------------------------------------------


def _settings(config):
    """(bind, port, Tracker keyword arguments) from a tracker's config.json."""
    config = dict(config or {})
    if "state_dir" not in config:
        raise LssdError("tracker config has no state_dir; it names the minion's lssd directory")
    bind = config.get("bind") or DEFAULT_BIND
    if not isinstance(bind, str):
        raise LssdError(f"tracker setting bind={bind!r} must be an address such as '0.0.0.0'")
    port = config.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise LssdError(f"tracker setting port={port!r} must be an integer in 0..65535")
    names = ("interval", "min_interval", "numwant_default", "numwant_max", "peer_expiry",
             "max_peers_per_torrent", "max_torrents")
    kwargs = {name: config[name] for name in names if config.get(name) is not None}
    return bind, port, dict(kwargs, state_dir=config["state_dir"])


def run(reporter):
    """Serve until SIGTERM (``reporter.stopping``). Binds first, so a taken port fails the start."""
    bind, port, kwargs = _settings(reporter.config)
    tracker = Tracker(**kwargs)
    server = make_server(tracker, bind, port)
    port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="tracker-http", daemon=True
    )
    thread.start()
    try:
        host = bind if bind.strip("[]") not in _WILDCARDS else socket.gethostname()
        reporter.report(
            status="running",
            bind=bind,
            port=port,
            url=announce_url(host, port),
            status_url=status_url(bind, port),
            interval=tracker.interval,
        )
        sweep_every = max(0.2, min(tracker.peer_expiry / 2, 5.0))
        next_sweep = time.monotonic() + sweep_every
        while not reporter.stopping:
            time.sleep(0.1)
            if time.monotonic() >= next_sweep:
                tracker.sweep()
                next_sweep = time.monotonic() + sweep_every
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- clients of a running tracker --------------------------------------------------------------


def status_url(bind, port):
    """The URL of the /status page of a tracker bound to ``bind`` (a wildcard means this host)."""
    host = _WILDCARDS.get(bind or "", bind)
    return f"http://{url_host(host)}:{port}/status"


def _fetch(url, what, timeout):
    # No proxy: http_proxy in a minion's environment must not capture a local tracker.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.read(64 << 20)
    except urllib.error.URLError as exc:
        raise LssdError(f"{what} {url} is unreachable: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LssdError(f"{what} {url} is unreachable: {exc}") from None


def fetch_slice(url, info_hash, port, timeout=2):
    """``(rank, peers)`` from the tracker's /slice at ``url`` for our ``info_hash`` and ``port``."""
    query = f"?info_hash={urllib.parse.quote_from_bytes(info_hash)}&port={port}"
    body = _fetch(url + query, "tracker slice", timeout)
    try:
        answer = bencode.decode(body)
    except ValueError:
        raise LssdError(f"tracker slice {url} answered {body[:80]!r}, not bencode") from None
    if isinstance(answer, dict) and b"failure reason" in answer:
        reason = answer[b"failure reason"]
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else repr(reason)
        raise LssdError(f"tracker slice {url}: {reason}")
    rank, peers = (answer.get(b"rank"), answer.get(b"peers")) if isinstance(answer, dict) else (None, None)
    if not (isinstance(rank, int) and isinstance(peers, int) and 0 <= rank < peers):
        raise LssdError(f"tracker slice {url} answered {answer!r:.200}, not a rank of peers")
    return rank, peers


def fetch_status(host, port, timeout=5):
    """The /status of the tracker at ``host``:``port`` as a dict; LssdError if it cannot be had."""
    url = status_url(host, port)
    body = _fetch(url, "tracker status", timeout)
    try:
        data = json.loads(body)
    except ValueError:
        raise LssdError(
            f"tracker status {url} answered {body[:80]!r}, not JSON; is an lssd tracker there?"
        ) from None
    if not isinstance(data, dict) or "torrents" not in data:
        raise LssdError(f"tracker status {url} answered JSON without 'torrents': {data!r:.200}")
    return data
