"""Talking to a running tracker: the URLs peers and operators use, and the calls they make.

Every tracker URL is built here, so the announce URL in a torrent, the ``/slice`` URL a peer
derives from it and the passkey both carry cannot drift apart: ``announce_url`` makes
``http://host:port/announce?passkey=<hex>`` (libtorrent appends ``&info_hash=...`` to it),
``slice_url`` swaps the path and keeps the passkey. ``fetch_status`` presents the admin token
the tracker wrote into its run directory, so it works whatever address the tracker binds.
"""

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request

from salt_lssd import LssdError, bencode
from salt_lssd.torrent import url_host
from salt_lssd.tracker.registry import validate_passkey

# The admin token's file in the tracker's run directory (mode 0600).
ADMIN_TOKEN_FILE = "admin_token"
# Where a tracker bound to a wildcard address is reached from its own host.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}
_ANNOUNCE = "/announce"


def announce_url(host, port, passkey=None):
    """Announce URL of our tracker, with ``?passkey=<hex>`` when the torrent has one.

    libtorrent only talks to a loopback tracker whose path starts with /announce (SSRF
    mitigation), so every URL we make has that path."""
    if not host:
        raise LssdError("tracker host is empty; set pillar lssd:tracker:host or pass tracker=")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise LssdError(f"tracker port {port!r} is not a number; allowed: 1-65535") from None
    if not 0 < port < 65536:
        raise LssdError(f"tracker port {port} is out of range; allowed: 1-65535")
    url = f"http://{url_host(host)}:{port}{_ANNOUNCE}"
    passkey = validate_passkey(passkey)
    return url if passkey is None else f"{url}?passkey={passkey}"


def check_announce_url(url):
    """Return ``url`` if it is an http(s) announce URL our tracker can answer: path starting
    with /announce, and no query but ``passkey=<hex>``; else raise LssdError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LssdError(f"tracker {url!r} is not an http(s) URL such as http://tracker01:8998/announce")
    if not parts.path.startswith(_ANNOUNCE):
        raise LssdError(f"tracker {url!r} must have a path starting with /announce")
    if parts.query:
        _query_passkey(url, parts.query)
    return url


def _query_passkey(url, query):
    name, sep, value = query.partition("=")
    if name != "passkey" or not sep or "&" in value:
        raise LssdError(f"tracker {url!r} has the query {query!r}; allowed: none, or passkey=<hex>")
    try:
        return validate_passkey(value)
    except LssdError as exc:
        raise LssdError(f"tracker {url!r}: {exc}") from None


def passkey_of(announce):
    """The passkey (lower-case hex) an announce URL carries, or None; LssdError if the URL is
    not one our tracker answers (see :func:`check_announce_url`)."""
    parts = urllib.parse.urlsplit(check_announce_url(announce))
    return _query_passkey(announce, parts.query) if parts.query else None


def slice_url(announce):
    """Our tracker's /slice URL for a torrent announcing to ``announce`` (None if not ours),
    with the announce URL's passkey."""
    parts = urllib.parse.urlsplit(announce)
    if not parts.path.endswith(_ANNOUNCE) or parts.fragment:
        return None
    if parts.query:
        try:
            _query_passkey(announce, parts.query)
        except LssdError:
            return None
    path = parts.path[: -len(_ANNOUNCE)] + "/slice"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def status_url(bind, port):
    """The URL of the /status page of a tracker bound to ``bind`` (a wildcard means this host)."""
    host = WILDCARDS.get(bind or "", bind)
    return f"http://{url_host(host)}:{port}/status"


def read_admin_token(run_dir):
    """The admin token a tracker running from ``run_dir`` wrote, or None."""
    try:
        with open(os.path.join(run_dir, ADMIN_TOKEN_FILE)) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def shown(url):
    """``url`` without its query, as messages show it: the passkey stays out of logs and events."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(query="")) if "?" in url else url


def _fetch(url, what, timeout, token=None):
    # No proxy: http_proxy in a minion's environment must not capture a local tracker.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read(64 << 20)
    except urllib.error.URLError as exc:
        raise LssdError(f"{what} {shown(url)} is unreachable: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LssdError(f"{what} {shown(url)} is unreachable: {exc}") from None


def _failure_reason(answer):
    if isinstance(answer, dict) and b"failure reason" in answer:
        reason = answer[b"failure reason"]
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else repr(reason)
    return None


def fetch_slice(url, info_hash, port, timeout=2):
    """``(rank, peers)`` from the tracker's /slice at ``url`` (as :func:`slice_url` made it,
    passkey included) for our ``info_hash`` and ``port``."""
    query = f"info_hash={urllib.parse.quote_from_bytes(info_hash)}&port={port}"
    body = _fetch(url + ("&" if "?" in url else "?") + query, "tracker slice", timeout)
    try:
        answer = bencode.decode(body)
    except ValueError:
        raise LssdError(f"tracker slice {shown(url)} answered {body[:80]!r}, not bencode") from None
    reason = _failure_reason(answer)
    if reason is not None:
        raise LssdError(f"tracker slice {shown(url)}: {reason}")
    rank, peers = (answer.get(b"rank"), answer.get(b"peers")) if isinstance(answer, dict) else (None, None)
    if not (isinstance(rank, int) and isinstance(peers, int) and 0 <= rank < peers):
        raise LssdError(f"tracker slice {shown(url)} answered {answer!r:.200}, not a rank of peers")
    return rank, peers


def fetch_status(host, port, timeout=5, token=None, run_dir=None):
    """The /status of the tracker at ``host``:``port`` as a dict; LssdError if it cannot be had.

    The tracker answers /status only to 127.0.0.1/::1 or to its admin token: pass ``token``,
    or ``run_dir`` (the tracker's run directory, where it wrote the token)."""
    url = status_url(host, port)
    if token is None and run_dir is not None:
        token = read_admin_token(run_dir)
    body = _fetch(url, "tracker status", timeout, token)
    try:
        data = json.loads(body)
    except ValueError:
        try:
            reason = _failure_reason(bencode.decode(body))
        except ValueError:
            reason = None
        if reason is not None:
            raise LssdError(f"tracker status {url} refused: {reason}") from None
        raise LssdError(
            f"tracker status {url} answered {body[:80]!r}, not JSON; is an lssd tracker there?"
        ) from None
    if not isinstance(data, dict) or "torrents" not in data:
        raise LssdError(f"tracker status {url} answered JSON without 'torrents': {data!r:.200}")
    return data
