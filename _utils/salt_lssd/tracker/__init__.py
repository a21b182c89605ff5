"""The HTTP BitTorrent tracker: the detached process that tells peers of a deploy about each other.

One job per module: registry.py (the info-hashes served, with their passkeys, on disk),
peerstore.py (swarms and peers in memory, bounded), protocol.py (announce, scrape, /slice,
/status and their refusals, without sockets), server.py (the single-threaded network server
and ``python -m salt_lssd tracker RUN_DIR``), client.py (URLs and calls to a running tracker).
The names below are the package's interface; callers use ``from salt_lssd import tracker``.
"""

from salt_lssd.tracker.client import (
    ADMIN_TOKEN_FILE,
    announce_url,
    check_announce_url,
    fetch_slice,
    fetch_status,
    passkey_of,
    read_admin_token,
    slice_url,
    status_url,
)
from salt_lssd.tracker.peerstore import (
    DEFAULT_MAX_PEERS,
    DEFAULT_MAX_PEERS_PER_IP,
    DEFAULT_MAX_PEERS_PER_TORRENT,
    DEFAULT_MAX_TORRENTS,
)
from salt_lssd.tracker.protocol import (
    DEFAULT_INTERVAL,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_NUMWANT,
    DEFAULT_NUMWANT_MAX,
    Tracker,
    failure,
    parse_query,
)
from salt_lssd.tracker.registry import (
    allow,
    lookup,
    new_passkey,
    registered,
    validate_infohash,
    validate_passkey,
)
from salt_lssd.tracker.server import DEFAULT_BIND, DEFAULT_PORT, Server, make_server, run

__all__ = [
    "ADMIN_TOKEN_FILE", "DEFAULT_BIND", "DEFAULT_INTERVAL", "DEFAULT_MAX_PEERS",
    "DEFAULT_MAX_PEERS_PER_IP", "DEFAULT_MAX_PEERS_PER_TORRENT", "DEFAULT_MAX_TORRENTS",
    "DEFAULT_MIN_INTERVAL", "DEFAULT_NUMWANT", "DEFAULT_NUMWANT_MAX", "DEFAULT_PORT", "Server",
    "Tracker", "allow", "announce_url", "check_announce_url", "failure", "fetch_slice",
    "fetch_status", "lookup", "make_server", "new_passkey", "parse_query", "passkey_of",
    "read_admin_token", "registered", "run", "slice_url", "status_url", "validate_infohash",
    "validate_passkey",
]
