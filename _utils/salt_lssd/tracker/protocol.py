"""The tracker's protocol, without sockets: what each request means and what it is answered.

:class:`Tracker` answers announce (BEP 3) with compact peer lists (BEP 23, ``peers6`` per
BEP 7), scrape (BEP 48), ``/slice`` (each peer's rank, for swarm.py's piece slices) and a JSON
``/status``, for the torrents registered in registry.py, keeping peers in peerstore.py. It
decides who may know what: an info-hash registered with a passkey is served only to requests
carrying it, and a wrong or missing passkey is answered exactly like an unknown info-hash;
listing every torrent (``/status``, ``/scrape`` without ``info_hash``) is for this host or the
holder of the admin token. It is strict: every bad request gets a bencoded ``failure reason``
naming the bad field and value, never HTML or a traceback. Work per announce is constant,
because a whole fleet announces at once and keeps announcing every ``interval`` seconds.
"""

import hmac
import ipaddress
import json
import math
import operator
import re
import socket
import time
import urllib.parse

from salt_lssd import LssdError, bencode
from salt_lssd.tracker import peerstore, registry

# Deploys last minutes, not days: peers must learn of each other quickly, unlike the 30 minutes
# public trackers ask for.
DEFAULT_INTERVAL = 10
DEFAULT_MIN_INTERVAL = 5
DEFAULT_NUMWANT = 50
DEFAULT_NUMWANT_MAX = 200
# Announces per second the whole tracker is asked for at most: beyond interval x this many
# peers, the interval grows with the number of peers so the steady announce load stays here,
# well under what one tracker process answers (bench/README.md, "Tracker throughput"), and the
# headroom is left for a fleet's first announces and for abuse.
DEFAULT_ANNOUNCE_RATE = 1000
# A peer that missed this many announces in a row is gone (crashed, unplugged).
_EXPIRY_INTERVALS = 3
_EXPIRY_SLACK = 5
# A registered torrent with no peer for this long is forgotten, passkey and all: long enough
# for a seeder started by hand after registering, short enough that a day's deploys do not pile
# up. Idle registrations are looked for at most every _FORGET_EVERY seconds.
DEFAULT_FORGET_AFTER = 3600
_FORGET_EVERY = 5.0
# A wrong passkey for a known info-hash re-reads its registration (it may have been renewed)
# at most this often, so guessing costs no disk work.
_RELOAD_EVERY = 1.0

TEXT = "text/plain"
JSON = "application/json"
_EVENTS = ("", "started", "completed", "stopped", "paused")  # paused: BEP 21, libtorrent sends it
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Only the loopback addresses themselves are this host for sure; the rest of 127.0.0.0/8 may be
# forwarded or NATed from elsewhere.
DEFAULT_TRUSTED_ADDRESSES = ("127.0.0.1", "::1")
_NOT_REGISTERED = "info_hash {} is not registered with this tracker"
_COMPACT = operator.attrgetter("compact")


class Refused(Exception):
    """A request the tracker answers with a bencoded failure reason (the message)."""


def failure(reason):
    """The bencoded answer to a request the tracker refuses."""
    return bencode.encode({"failure reason": reason})


def _int_setting(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LssdError(f"tracker setting {name}={value!r} must be an integer >= {minimum}")
    return value


class Tracker:
    """Announce, scrape, slice and status for the torrents registered under ``state_dir``.

    Settings (each also a key of the tracker's config.json): ``interval`` (s, default 10) and
    ``min_interval`` (5) handed to peers; ``numwant_default`` (50) and ``numwant_max`` (200)
    peers per answer; ``peer_expiry`` (s, default 3 intervals + 5) after a peer's last
    announce; ``max_peers_per_torrent`` (20,000), ``max_peers_per_ip`` (8 per torrent, at
    least 2), ``max_peers`` (100,000 overall) and ``max_torrents`` (1,000) bound memory;
    ``announce_rate`` (1,000/s) is the steady announce load the interval grows to keep;
    ``trusted_addresses`` (127.0.0.1, ::1) may list every torrent without ``admin_token``;
    ``forget_after`` (s, default 3,600): a registered torrent whose swarm has had no peer for
    this long is forgotten (registry.py), never one with live peers.

    Not thread-safe: server.py calls it from its one event-loop thread. ``clock`` (seconds,
    monotonic) is for tests.
    """

    def __init__(self, state_dir, interval=DEFAULT_INTERVAL, min_interval=DEFAULT_MIN_INTERVAL,
                 numwant_default=DEFAULT_NUMWANT, numwant_max=DEFAULT_NUMWANT_MAX,
                 peer_expiry=None, max_peers_per_torrent=peerstore.DEFAULT_MAX_PEERS_PER_TORRENT,
                 max_torrents=peerstore.DEFAULT_MAX_TORRENTS,
                 max_peers_per_ip=peerstore.DEFAULT_MAX_PEERS_PER_IP,
                 max_peers=peerstore.DEFAULT_MAX_PEERS, announce_rate=DEFAULT_ANNOUNCE_RATE,
                 trusted_addresses=DEFAULT_TRUSTED_ADDRESSES, admin_token=None,
                 forget_after=DEFAULT_FORGET_AFTER, clock=time.monotonic):
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
        if isinstance(forget_after, bool) or not isinstance(forget_after, (int, float)) or forget_after <= 0:
            raise LssdError(f"tracker setting forget_after={forget_after!r} must be a number of seconds > 0")
        self.forget_after = forget_after
        self._next_forget = -math.inf
        self.announce_rate = _int_setting("announce_rate", announce_rate, 1)
        self.store = peerstore.PeerStore(
            max_peers_per_torrent=_int_setting("max_peers_per_torrent", max_peers_per_torrent, 1),
            # >1: several minions may share one host.
            max_peers_per_ip=_int_setting("max_peers_per_ip", max_peers_per_ip, 2),
            max_peers=_int_setting("max_peers", max_peers, 1),
            max_torrents=_int_setting("max_torrents", max_torrents, 1),
        )
        self.trusted = _trusted_set(trusted_addresses)
        self.trusted_addresses = tuple(trusted_addresses)
        self.admin_token = admin_token
        # Set by the server: () -> its connection counters, shown in /status.
        self.connection_stats = None
        self.started = time.time()
        self._clock = clock
        # info_hash -> passkey (bytes) or None, for the swarms made so far: a known hash costs
        # no file system work, whatever the flood.
        self._passkeys = {}
        self._reloaded = {}  # info_hash -> clock time of the last re-read after a bad passkey

    # -- routing --

    def handle(self, method, target, remote_ip, token=None):
        """``(body, content type)`` for one HTTP request: ``method`` and ``target`` (bytes,
        as on the request line), the client's address and the bearer token it presented."""
        path, _, query = target.partition(b"?")
        try:
            if method != b"GET":  # HEAD too: an announce with its answer thrown away
                raise Refused(
                    f"HTTP method {show(method)} is not supported; a tracker answers GET"
                )
            if path == b"/announce":
                return self.announce(parse_query(query), remote_ip), TEXT
            if path == b"/scrape":
                return self._scrape_request(parse_query(query), remote_ip, token), TEXT
            if path == b"/slice":
                return self.slice(parse_query(query), remote_ip), TEXT
            if path == b"/status":
                self._check_admin("/status", remote_ip, token)
                return json.dumps(self.status(), sort_keys=True).encode(), JSON
            raise Refused(
                f"unknown path {show(path)}; this tracker answers /announce, /scrape, /slice "
                "and /status"
            )
        except Refused as exc:
            return failure(str(exc)), TEXT

    def _check_admin(self, what, remote_ip, token):
        if remote_ip in self.trusted:
            return
        if token and self.admin_token and hmac.compare_digest(
            token.encode("latin-1", "replace"), self.admin_token.encode()
        ):
            return
        trusted = ", ".join(self.trusted_addresses) or "no address"
        raise Refused(
            f"{what} lists every torrent; it answers only to {trusted} or to a request with "
            "the tracker's admin token (header 'Authorization: Bearer <token>'; the token is "
            "in the tracker's run directory)"
        )

    def _scrape_request(self, params, remote_ip, token):
        hashes = params.get("info_hash")
        if not hashes:
            self._check_admin("/scrape without info_hash", remote_ip, token)
        return self.scrape(hashes, params)

    # -- requests --

    def announce(self, params, remote_ip):
        """Answer an announce (BEP 3); ``params`` maps names to raw values (bytes, or str holding
        one byte per character; a list of them when a name came several times)."""
        try:
            return self._announce(params, remote_ip)
        except Refused as exc:
            return failure(str(exc))

    def scrape(self, info_hashes=None, params=None):
        """Answer a scrape (BEP 48) for ``info_hashes`` (raw), or for every torrent seen.
        ``params`` carries the ``passkey`` for protected torrents; an info-hash that is not
        registered, or protected by another passkey, is left out of ``files``."""
        try:
            return self._scrape(info_hashes, params or {})
        except Refused as exc:
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
            key = (_address(remote_ip)[0], port)
            swarm = self._swarm(info_hash, params)
            try:
                rank = self.store.rank(swarm, key)
            except peerstore.StoreFull as exc:
                raise Refused(str(exc)) from None
            return bencode.encode({"rank": rank, "peers": len(swarm.ranks)})
        except Refused as exc:
            return failure(str(exc))

    def status(self):
        """What the tracker serves, JSON-able: registered torrents with their swarm counts."""
        self.sweep()
        counts = {ih.hex(): swarm.counts() for ih, swarm in self.store.swarms.items()}
        torrents = {}
        records = registry.registered(self.state_dir)
        for infohash in set(records) | set(counts):
            seeders, leechers, completed = counts.get(infohash, (0, 0, 0))
            torrents[infohash] = {
                "tag": records.get(infohash, {}).get("tag"),
                "seeders": seeders,
                "leechers": leechers,
                "completed": completed,
                "peers": seeders + leechers,
            }
            if records.get(infohash, {}).get("app"):  # a tag of an lssd:app namespace
                torrents[infohash]["app"] = records[infohash]["app"]
        answer = {"torrents": torrents, "started": self.started,
                  "interval": self.current_interval(), "peers": self.store.total_peers}
        if self.connection_stats is not None:
            answer["connections"] = self.connection_stats()
        return answer

    def sweep(self):
        """Drop expired peers of every swarm, also those nobody announces to any more, then
        forget registrations idle for ``forget_after``."""
        self.store.sweep(self._clock())
        self.forget_idle()

    def forget_idle(self):
        """Forget each registered torrent whose swarm has had no peer for ``forget_after``
        seconds (at most every few seconds); returns the info-hashes (hex) forgotten. One
        with peers is marked active instead, on disk, so a restart keeps its idle time."""
        now = self._clock()
        if now < self._next_forget:
            return []
        self._next_forget = now + _FORGET_EVERY
        live = {ih.hex() for ih, swarm in self.store.swarms.items() if swarm.peers}
        forgotten = []
        for infohash in registry.infohashes(self.state_dir):
            if infohash in live:
                registry.mark_active(self.state_dir, infohash)
                continue
            since = registry.idle_since(self.state_dir, infohash)
            if since is not None and time.time() - since > self.forget_after \
                    and registry.forget(self.state_dir, infohash, since):
                raw = bytes.fromhex(infohash)
                self.store.swarms.pop(raw, None)
                self._passkeys.pop(raw, None)
                self._reloaded.pop(raw, None)
                forgotten.append(infohash)
        return forgotten

    def current_interval(self):
        """The announce interval handed out now: ``interval``, or longer once the peers
        recorded would announce more than ``announce_rate`` times a second."""
        return max(self.interval, math.ceil(self.store.total_peers / self.announce_rate))

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
            raise Refused(
                f"event {show(event)} is unknown; it must be started, completed, stopped, "
                "paused or empty"
            )
        compact = _flag(params, "compact")
        no_peer_id = _flag(params, "no_peer_id")
        numwant = _uint(params, "numwant")
        numwant = self.numwant_default if numwant is None else min(numwant, self.numwant_max)
        # The client's own ``ip`` parameter is ignored: any host could claim any address.
        ip = _address(remote_ip)
        swarm = self._swarm(info_hash, params)
        seeder = left == 0
        key = (ip[0], port)
        now = self._clock()
        interval = self.current_interval()
        if event == "stopped":
            self.store.stopped(swarm, key, now)
            chosen = []
        else:
            expires = now + self._expiry(interval)
            peer = self.store.announce(swarm, key, ip, port, peer_id, seeder, now, expires)
            if event == "completed":
                self.store.completed(swarm, peer)
            chosen = swarm.sample(numwant, seeder, peer)
        return _announce_answer(swarm, chosen, interval, self._min_interval(interval), compact,
                                no_peer_id)

    def _expiry(self, interval):
        if interval == self.interval:
            return self.peer_expiry
        # A grown interval stretches expiry with it, or peers would expire between announces.
        return max(self.peer_expiry, _EXPIRY_INTERVALS * interval + _EXPIRY_SLACK)

    def _min_interval(self, interval):
        return self.min_interval if interval == self.interval else max(self.min_interval, interval // 2)

    def _scrape(self, info_hashes, params):
        if info_hashes:
            wanted = {}
            for raw in info_hashes:
                info_hash = _raw(raw, "info_hash")
                if len(info_hash) != 20:
                    raise Refused(
                        f"info_hash {show(info_hash)} is {len(info_hash)} bytes long; it must "
                        "be exactly 20 bytes"
                    )
                try:
                    wanted[info_hash] = self._swarm(info_hash, params)
                except Refused:
                    continue  # BEP 48: unknown torrents are left out of ``files``
        else:
            wanted = dict(self.store.swarms)
        self.sweep()
        files = {}
        for info_hash, swarm in wanted.items():
            complete, incomplete, downloaded = swarm.counts()
            files[info_hash] = {"complete": complete, "incomplete": incomplete,
                                "downloaded": downloaded}
        return bencode.encode(
            {"files": files, "flags": {"min_request_interval": self.min_interval}}
        )

    def _swarm(self, info_hash, params):
        """The swarm of a registered ``info_hash`` whose passkey ``params`` carries, else the
        same refusal as for an unknown info-hash: a guess learns nothing."""
        given = _value(params, "passkey")
        if info_hash in self._passkeys:
            if _passkey_matches(self._passkeys[info_hash], given):
                return self.store.swarm(info_hash)
            now = self._clock()
            if now - self._reloaded.get(info_hash, -math.inf) < _RELOAD_EVERY:
                raise Refused(_NOT_REGISTERED.format(info_hash.hex()))
            self._reloaded[info_hash] = now
        record = registry.lookup(self.state_dir, info_hash.hex())
        required = record and record["passkey"] and record["passkey"].encode()
        if record is None or not _passkey_matches(required, given):
            raise Refused(_NOT_REGISTERED.format(info_hash.hex()))
        try:
            swarm = self.store.swarm(info_hash)
        except peerstore.StoreFull as exc:
            raise Refused(str(exc)) from None
        self._passkeys[info_hash] = required or None
        return swarm


def _trusted_set(addresses):
    """The client addresses, as the server reports them, that may list every torrent."""
    if isinstance(addresses, str) or not all(isinstance(a, str) for a in addresses or ()):
        raise LssdError(
            f"tracker setting trusted_addresses={addresses!r} must be a list of IP addresses"
        )
    trusted = set()
    for address in addresses:
        try:
            packed, text = _address(address)
        except Refused:
            raise LssdError(
                f"tracker setting trusted_addresses holds {address!r}, which is not an IP address"
            ) from None
        trusted.add(text)
        if len(packed) == 4:  # as a dual-stack socket shows it
            trusted.add("::ffff:" + text)
    return frozenset(trusted)


def _passkey_matches(required, given):
    if not required:
        return True
    return given is not None and hmac.compare_digest(required, given.lower())


def _announce_answer(swarm, chosen, interval, min_interval, compact, no_peer_id):
    complete, incomplete, _ = swarm.counts()
    if compact:
        # What bencode.encode makes of the dict below, written out: the keys in sorted order.
        # Every announce of a fleet comes here, and this costs a fraction of the general path.
        peers, peers6 = b"".join(map(_COMPACT, chosen)), b""
        if len(peers) != 6 * len(chosen):  # IPv6 peers among them (18 bytes each)
            peers = b"".join(p.compact for p in chosen if not p.v6)
            peers6 = b"".join(p.compact for p in chosen if p.v6)
        body = b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers%d:%s" % (
            complete, incomplete, interval, min_interval, len(peers), peers)
        if peers6:
            body += b"6:peers6%d:%s" % (len(peers6), peers6)
        return body + b"e"
    peers = [
        {"ip": p.ip, "port": p.port} if no_peer_id
        else {"ip": p.ip, "port": p.port, "peer id": p.peer_id}
        for p in chosen
    ]
    return bencode.encode({"interval": interval, "min interval": min_interval,
                           "complete": complete, "incomplete": incomplete, "peers": peers})


# -- query parsing -----------------------------------------------------------------------------


def show(value, limit=64):
    """A bad value as a failure reason quotes it: text as text, binary as hex."""
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    cut = value[:limit]
    more = "..." if len(value) > limit else ""
    if all(32 <= b < 127 for b in cut):
        return repr(cut.decode("ascii")) + more
    return "hex " + cut.hex() + more


def _raw(value, name):
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise Refused(f"{name} {value!r} holds characters that are not bytes") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise Refused(f"{name} has a value of type {type(value).__name__}, not bytes")


def _value(params, name):
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise Refused(f"{name} is given {len(value)} times; give it once")
        value = value[0]
    return value if value.__class__ is bytes else _raw(value, name)


def _binary(params, name, length, what, request="announce"):
    value = _value(params, name)
    if value is None:
        raise Refused(f"{request} is missing {name} ({what}, {length} bytes, URL-encoded)")
    if len(value) != length:
        raise Refused(
            f"{name} {show(value)} is {len(value)} bytes long; it must be exactly {length} bytes"
        )
    return value


def _uint(params, name, required=False, request="announce"):
    value = _value(params, name)
    if value is None:
        if required:
            raise Refused(f"{request} is missing {name}")
        return None
    if not (value.isdigit() and len(value) <= 20):  # bytes.isdigit: ASCII 0-9 only
        raise Refused(f"{name} {show(value)} is not a non-negative integer")
    return int(value)


def _port(params, request):
    port = _uint(params, "port", required=True, request=request)
    if not 1 <= port <= 65535:
        raise Refused(f"port {port} is out of range; it must be 1..65535")
    return port


def _flag(params, name):
    value = _value(params, name)
    if value in (None, b"", b"0"):
        return False
    if value == b"1":
        return True
    raise Refused(f"{name} {show(value)} must be 0 or 1")


def _address(remote_ip):
    """``(packed, text)`` of the client's address: 4 bytes for IPv4, 16 for IPv6."""
    try:
        return socket.inet_pton(socket.AF_INET, remote_ip), remote_ip
    except (OSError, TypeError):
        pass
    try:
        ip = ipaddress.IPv6Address(remote_ip)
    except ValueError:
        raise Refused(f"remote address {remote_ip!r} is not an IP address") from None
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; they belong in ``peers``.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.packed, str(ip.ipv4_mapped)
    return ip.packed, str(ip)


def parse_query(query):
    """``{name: [raw value, ...]}`` from a URL query string: bytes as on the wire, or str with
    one character per byte (latin-1), so a binary info_hash survives percent-decoding."""
    if isinstance(query, str):
        try:
            query = query.encode("latin-1")
        except UnicodeEncodeError:
            raise Refused(
                f"bad query encoding: {query[:64]!r} holds characters that are not bytes"
            ) from None
    params = {}
    for piece in query.split(b"&"):
        name, _, value = piece.partition(b"=")
        key = _KNOWN_NAMES.get(name)
        if key is None:
            if not piece:
                continue
            key = _name(name, piece)
        if b"%" in value or b"+" in value:
            value = _unquote(value, piece)
        values = params.get(key)
        if values is None:
            params[key] = [value]
        else:
            values.append(value)
    return params


# The names clients send, decoded once: every announce of a fleet is parsed here.
_KNOWN_NAMES = {
    name.encode(): name
    for name in ("info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "event",
                 "compact", "no_peer_id", "numwant", "key", "passkey", "corrupt", "redundant",
                 "supportcrypto", "requirecrypto", "trackerid", "ip", "ipv4", "ipv6")
}


def _name(raw, piece):
    name = _unquote(raw, piece)
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(f"bad query encoding: parameter name {show(name)} is not ASCII") from None


def _unquote(raw, piece):
    if b"%" in raw and _BAD_ESCAPE.search(raw):
        raise Refused(
            f"bad query encoding: {show(piece)} has a '%' not followed by two hex digits"
        )
    return urllib.parse.unquote_to_bytes(raw.replace(b"+", b" "))
