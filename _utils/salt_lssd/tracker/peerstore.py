"""The tracker's memory: swarms of peers, their expiry, sampling and the caps that bound it all.

One :class:`Swarm` per registered torrent holds its peers, keyed by (address, port) and ordered
by last announce, so expiry looks at the oldest only and every operation is constant work per
announce. Memory is bounded four ways: peers per swarm, peers per host per swarm (one host
cannot fill a swarm and starve real peers), peers overall, and swarms. The store knows
nothing of HTTP, passkeys or bencoding; protocol.py decides who may reach it.
"""

import random
from collections import OrderedDict

DEFAULT_MAX_PEERS_PER_TORRENT = 20000
# Several minions may share one host (tests, small labs); a datacenter host runs one.
DEFAULT_MAX_PEERS_PER_IP = 8
# ~0.5 KiB per recorded peer: 100,000 peers is ~50 MiB at most.
DEFAULT_MAX_PEERS = 100000
DEFAULT_MAX_TORRENTS = 1000
# A peer restarted on a new port asks for a slice again; ranks outlive peers, so a host may
# hold more ranks than peers, but still a bounded number.
_RANKS_PER_PEER_SLOT = 4


class StoreFull(Exception):
    """A cap refuses the request (the message names it)."""


class Peer:
    __slots__ = ("compact", "completed", "expires", "ip", "key", "peer_id", "port", "seeder",
                 "slot", "v6")

    def __init__(self, key, peer_id, ip, port):
        packed, self.ip = ip  # the address as 4 or 16 bytes, and as text
        self.key = key
        self.peer_id = peer_id
        self.port = port
        self.v6 = len(packed) == 16
        self.compact = packed + port.to_bytes(2, "big")  # BEP 23 / BEP 7 entry
        self.seeder = False
        self.expires = 0.0
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


class Swarm:
    """The peers of one torrent. Change it through :class:`PeerStore`, which keeps the count
    over all swarms that ``max_peers`` bounds."""

    __slots__ = ("by_ip", "completed", "leechers", "peers", "ranks", "ranks_by_ip", "seeders")

    def __init__(self):
        self.peers = OrderedDict()  # (ip packed, port) -> Peer, least recently seen first
        self.by_ip = {}  # ip packed -> [Peer], at most max_peers_per_ip each
        self.seeders = _PeerList()
        self.leechers = _PeerList()
        self.completed = 0
        # (ip packed, port) -> rank, in the order peers asked for a slice (protocol.py's
        # /slice); kept after peers expire, so a rank is never handed out twice.
        self.ranks = {}
        self.ranks_by_ip = {}

    def counts(self):
        """(seeders, leechers, completed)."""
        return len(self.seeders.items), len(self.leechers.items), self.completed

    def add(self, peer, seeder):
        self.peers[peer.key] = peer
        self.by_ip.setdefault(peer.key[0], []).append(peer)
        peer.seeder = seeder
        (self.seeders if seeder else self.leechers).add(peer)

    def remove(self, peer):
        del self.peers[peer.key]
        same_host = self.by_ip[peer.key[0]]
        same_host.remove(peer)
        if not same_host:
            del self.by_ip[peer.key[0]]
        (self.seeders if peer.seeder else self.leechers).remove(peer)

    def touch(self, peer, seeder):
        self.peers.move_to_end(peer.key)
        if peer.seeder != seeder:
            (self.seeders if peer.seeder else self.leechers).remove(peer)
            peer.seeder = seeder
            (self.seeders if seeder else self.leechers).add(peer)

    def expire(self, now):
        """Drop peers whose time is up, oldest announce first; returns how many.

        Expiry times differ a little when the interval grows with the swarm, so a peer may
        wait behind an older one that has longer to live: it goes late, never early, and
        the caps still bound memory. Each peer goes once: constant amortised work.
        """
        gone = 0
        while self.peers:
            oldest = next(iter(self.peers.values()))
            if oldest.expires > now:
                break
            self.remove(oldest)
            gone += 1
        return gone

    def sample(self, count, for_seeder, requester):
        """Up to ``count`` peers from a random place in the swarm, never the ``requester`` (its
        Peer, or None if unrecorded); a seeder gets leechers only.

        A window of consecutive peers at a random offset (wrapping around), not ``count``
        independent draws: each peer is as likely to be chosen, and list slicing runs in C,
        where drawing fifty random indices in Python was the largest cost of an announce.
        """
        pools = (self.leechers.items,) if for_seeder else (self.leechers.items, self.seeders.items)
        total = sum(len(pool) for pool in pools)
        if count <= 0 or total == 0:
            return []
        want = min(total, count + 1)  # one spare, so dropping the requester leaves ``count``
        start = random.randrange(total)
        window = _window(pools, start, start + want)
        if start + want > total:
            window += _window(pools, 0, start + want - total)
        if requester in window:  # by identity: Peer has no __eq__
            window.remove(requester)
        return window[:count]


def _window(pools, lo, hi):
    """The peers at indices lo..hi-1 of the pools laid end to end."""
    out = []
    for pool in pools:
        size = len(pool)
        if lo < size and hi > 0:
            out += pool[max(lo, 0) : min(hi, size)]
        lo -= size
        hi -= size
    return out


class PeerStore:
    """Every swarm of a tracker, with the caps that bound its memory."""

    def __init__(self, max_peers_per_torrent=DEFAULT_MAX_PEERS_PER_TORRENT,
                 max_peers_per_ip=DEFAULT_MAX_PEERS_PER_IP, max_peers=DEFAULT_MAX_PEERS,
                 max_torrents=DEFAULT_MAX_TORRENTS):
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_peers_per_ip = max_peers_per_ip
        self.max_peers = max_peers
        self.max_torrents = max_torrents
        self.swarms = {}  # info_hash (20 bytes) -> Swarm
        self.total_peers = 0

    def swarm(self, info_hash):
        """The swarm of ``info_hash``, made if new; StoreFull beyond max_torrents."""
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            if len(self.swarms) >= self.max_torrents:
                raise StoreFull(
                    f"info_hash {info_hash.hex()} is registered, but this tracker already "
                    f"serves {self.max_torrents} torrents (max_torrents)"
                )
            swarm = self.swarms[info_hash] = Swarm()
        return swarm

    def announce(self, swarm, key, ip, port, peer_id, seeder, now, expires):
        """Record an announce; returns the Peer, or None when a cap leaves it unrecorded (the
        peer is still answered, and established peers stay)."""
        self.total_peers -= swarm.expire(now)
        peer = swarm.peers.get(key)
        if peer is not None:
            peer.peer_id = peer_id
            swarm.touch(peer, seeder)
        else:
            same_host = swarm.by_ip.get(key[0])
            if same_host is not None and len(same_host) >= self.max_peers_per_ip:
                # The host's stalest entry makes room: a minion restarted on a new port
                # replaces its old self instead of being shut out until that expires.
                self._drop(swarm, min(same_host, key=lambda p: p.expires))
            elif len(swarm.peers) >= self.max_peers_per_torrent or self.total_peers >= self.max_peers:
                return None
            peer = Peer(key, peer_id, ip, port)
            swarm.add(peer, seeder)
            self.total_peers += 1
        peer.expires = expires
        return peer

    def _drop(self, swarm, peer):
        swarm.remove(peer)
        self.total_peers -= 1

    def stopped(self, swarm, key, now):
        """A peer said goodbye (event=stopped)."""
        self.total_peers -= swarm.expire(now)
        peer = swarm.peers.get(key)
        if peer is not None:
            self._drop(swarm, peer)

    def completed(self, swarm, peer):
        """Count a recorded peer's first completed event (repeats count once)."""
        if peer is not None and not peer.completed:
            peer.completed = True
            swarm.completed += 1

    def rank(self, swarm, key):
        """This peer's slice rank in ``swarm``: 0, 1, 2... in the order of first asking."""
        rank = swarm.ranks.get(key)
        if rank is not None:
            return rank
        if len(swarm.ranks) >= self.max_peers_per_torrent:
            raise StoreFull(
                f"this swarm already ranked {self.max_peers_per_torrent} peers "
                "(max_peers_per_torrent)"
            )
        host_ranks = swarm.ranks_by_ip.get(key[0], 0)
        if host_ranks >= _RANKS_PER_PEER_SLOT * self.max_peers_per_ip:
            raise StoreFull(
                f"this host already has {host_ranks} ranks in this swarm "
                f"({_RANKS_PER_PEER_SLOT} x max_peers_per_ip)"
            )
        swarm.ranks_by_ip[key[0]] = host_ranks + 1
        rank = swarm.ranks[key] = len(swarm.ranks)
        return rank

    def sweep(self, now):
        """Drop expired peers of every swarm, also those nobody announces to any more."""
        for swarm in self.swarms.values():
            self.total_peers -= swarm.expire(now)
