"""The swarm as the operator sees it: each peer's state, folded from ``lssd/peer/<tag>/...``
events and the peer step's job returns.

A peer is ``waiting`` (its job runs, no download yet), ``downloading`` (``start`` or
``progress`` seen), ``installing`` (downloaded, verify and extract under way), ``done`` or
``failed``, or ``skipped`` (not deployed because a canary failed); the aggregates (rate, bytes, ETA) are sums over the peers.
"""

import time


class Peer:
    def __init__(self, name):
        self.name = name
        self.status = "waiting"
        self.progress = 0.0
        self.rate = 0
        self.done_bytes = 0
        self.size = None
        self.peers = 0
        self.tracker_error = None
        self.reason = None
        self.summary = None


class SwarmView:
    """Per peer state of one tag's deploy, and the swarm's totals."""

    def __init__(self, tag, minions=()):
        self.tag = tag
        self.peers = {name: Peer(name) for name in minions}
        self.started = time.monotonic()
        self.size = None
        self.seeder_upload = None  # bytes/s, from the seeder's lssd.status

    def add(self, minions):
        for name in minions:
            self.peers.setdefault(name, Peer(name))

    def on_event(self, tag, data, minion):
        """Listener for the Bus: ``lssd/peer/<tag>/<kind>`` from ``minion``."""
        parts = tag.split("/")
        if len(parts) != 4 or parts[:2] != ["lssd", "peer"] or parts[2] != self.tag or not minion:
            return
        peer = self.peers.setdefault(minion, Peer(minion))
        kind = parts[3]
        if kind in ("start", "progress"):
            self._progress(peer, data)
        elif kind == "complete":
            peer.status, peer.progress, peer.summary = "done", 100.0, data
            peer.done_bytes = data.get("bytes") or peer.done_bytes
            peer.rate = 0
        elif kind == "failed":
            peer.status, peer.reason, peer.rate = "failed", data.get("reason"), 0

    def _progress(self, peer, data):
        if peer.status in ("done", "failed"):
            return
        peer.size = data.get("size") or peer.size
        self.size = self.size or peer.size
        peer.progress = float(data.get("progress") or peer.progress)
        peer.rate = data.get("download_rate") or 0
        peer.done_bytes = data.get("total_done") or peer.done_bytes
        peer.peers = data.get("peers") or 0
        peer.tracker_error = data.get("tracker_error")
        peer.status = "installing" if peer.progress >= 100 else "downloading"

    def finished(self, minion, ok, reason=None):
        """The peer step's job returned for ``minion``."""
        peer = self.peers.setdefault(minion, Peer(minion))
        if ok:
            peer.status, peer.rate = "done", 0
            peer.progress = 100.0 if peer.size or peer.summary else peer.progress
        else:
            peer.status, peer.rate = "failed", 0
            peer.reason = peer.reason or reason

    def skipped(self, minion):
        """The run will not deploy ``minion`` (a canary failed)."""
        peer = self.peers.setdefault(minion, Peer(minion))
        peer.status, peer.rate = "skipped", 0

    def counts(self):
        found = {"done": 0, "downloading": 0, "installing": 0, "waiting": 0, "failed": 0, "skipped": 0}
        for peer in self.peers.values():
            found[peer.status] += 1
        return found

    def rate(self):
        return sum(p.rate for p in self.peers.values() if p.status == "downloading")

    def remaining(self):
        """Bytes the peers still downloading or waiting need (None before the size is known)."""
        if not self.size:
            return None
        return sum(max(self.size - p.done_bytes, 0) for p in self.peers.values() if p.status in ("waiting", "downloading"))

    def eta(self):
        remaining, rate = self.remaining(), self.rate()
        if remaining is None or rate <= 0:
            return None
        # Peers download in parallel: the swarm's ETA is the slowest peer's, no less than the
        # total still wanted over the total rate when every peer shares one bottleneck.
        slowest = max(((self.size - p.done_bytes) / p.rate for p in self.peers.values()
                       if p.status == "downloading" and p.rate > 0), default=0)
        return max(slowest, remaining / rate if self.counts()["waiting"] else 0)

    def slowest(self, count=3):
        """The peers furthest behind among those still downloading (then those not started)."""
        running = [p for p in self.peers.values() if p.status in ("downloading", "waiting")]
        return sorted(running, key=lambda p: (p.status == "waiting", p.progress, p.rate, p.name))[:count]
