"""The tracker's network server: one thread, one epoll loop, bounded in every direction.

No thread per connection: a client that connects and trickles bytes (slowloris) costs a file
descriptor and a few hundred bytes, never a thread, and is closed when its request is not
complete ``request_timeout`` seconds after it connected. Connections are capped overall (the
oldest is closed to make room for a new one, so a flood of idle connections cannot lock out a
peer that sends its announce at once) and per client address (beyond the cap a new connection
is closed at once). Requests are capped in size. Each connection carries one request and is
closed after the answer (HTTP/1.0), as trackers are used: a peer announces every ``interval``
seconds. The protocol is protocol.py's; :func:`run` is ``python -m salt_lssd tracker RUN_DIR``.
"""

import contextlib
import errno
import os
import resource
import secrets
import select
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict

from salt_lssd import LssdError, __version__
from salt_lssd.common import write_atomic
from salt_lssd.tracker.client import ADMIN_TOKEN_FILE, WILDCARDS, announce_url, status_url
from salt_lssd.tracker.protocol import TEXT, Tracker, failure, show

DEFAULT_BIND = "0.0.0.0"
DEFAULT_PORT = 8998
DEFAULT_MAX_CONNECTIONS = 4096
# A host runs one minion in production, a few in a lab; 64 open requests at once is abuse.
DEFAULT_MAX_CONNECTIONS_PER_IP = 64
# A peer's announce arrives within milliseconds of its connect, even on a busy network.
DEFAULT_REQUEST_TIMEOUT = 5.0
# An announce from libtorrent is ~500 bytes with its headers.
MAX_REQUEST = 8192
# Read and dropped at most after the answer to an oversized request (within request_timeout).
_DRAIN = 1 << 20
_ACCEPT_BATCH = 256
_FDS_KEPT_FREE = 64  # for the listening socket, the log, registry reads
_SERVER = f"salt-lssd-tracker/{__version__}".encode()
# Accepted sockets stay in blocking mode and every call says not to wait: one system call per
# connection fewer than setting them non-blocking.
_NOWAIT = socket.MSG_DONTWAIT
_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT


class _Conn:
    __slots__ = ("buf", "deadline", "drain", "ip", "out", "registered", "sock")

    def __init__(self, sock, ip, deadline):
        self.sock = sock
        self.ip = ip
        self.deadline = deadline
        self.buf = b""
        self.out = None  # what is left to send, once the answer is made
        self.registered = False
        # Bytes still to be read and dropped after the answer to an oversized request: a
        # close with unread data resets the connection, and the client would lose the answer.
        self.drain = 0


def _positive(name, value, kind=int):
    allowed = (int, float) if kind is float else int
    if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0:
        what = "a number of seconds" if kind is float else "an integer"
        raise LssdError(f"tracker setting {name}={value!r} must be {what} > 0")
    return value


class Server:
    """The tracker's HTTP server, bound and listening on ``bind``:``port`` (0: any free port).

    Settings (each also a key of the tracker's config.json): ``max_connections`` (4,096, and
    at most the open-file limit less 64), ``max_connections_per_ip`` (64) open at once,
    ``request_timeout`` (5 s from connect to a complete request).
    """

    def __init__(self, tracker, bind=DEFAULT_BIND, port=DEFAULT_PORT,
                 max_connections=DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_ip=DEFAULT_MAX_CONNECTIONS_PER_IP,
                 request_timeout=DEFAULT_REQUEST_TIMEOUT):
        self.tracker = tracker
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = soft - _FDS_KEPT_FREE if soft != resource.RLIM_INFINITY else max_connections
        self.max_connections = max(1, min(_positive("max_connections", max_connections), limit))
        self.max_connections_per_ip = _positive("max_connections_per_ip", max_connections_per_ip)
        self.request_timeout = _positive("request_timeout", request_timeout, float)
        self.listener = _listen(bind, port)
        self.server_address = self.listener.getsockname()
        self._epoll = select.epoll()
        self._epoll.register(self.listener.fileno(), select.EPOLLIN)
        self._conns = OrderedDict()  # fd -> _Conn, oldest first, so also soonest deadline first
        self._per_ip = {}
        self._logged = set()
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()  # not serving yet: shutdown() has nothing to wait for
        # accepted; evicted to make room under max_connections; refused beyond
        # max_connections_per_ip; timed_out after request_timeout.
        self.stats = {"accepted": 0, "evicted": 0, "refused": 0, "timed_out": 0}
        tracker.connection_stats = lambda: dict(self.stats, open=len(self._conns))

    def serve_forever(self, poll_interval=0.1, should_stop=None, sweep_every=1.0):
        """Serve until :meth:`shutdown` or until ``should_stop()`` is true; expired peers are
        dropped every ``sweep_every`` seconds."""
        self._stopped.clear()
        next_sweep = time.monotonic() + sweep_every
        listener = self.listener.fileno()
        try:
            while not self._stop and not (should_stop and should_stop()):
                for fd, events in self._epoll.poll(poll_interval, 1024):
                    self._event(fd, listener)
                now = time.monotonic()
                try:
                    self._expire(now)
                    if now >= next_sweep:
                        next_sweep = now + sweep_every
                        self.tracker.sweep()
                except Exception as exc:  # noqa: BLE001 -- logged once; the tracker keeps serving
                    self.log_unexpected(exc)
        finally:
            self._stopped.set()

    def _event(self, fd, listener):
        conn = None
        try:
            if fd == listener:
                self._accept()
            else:
                conn = self._conns.get(fd)
                if conn is not None:
                    self._ready(conn)
        except Exception as exc:  # noqa: BLE001 -- one connection's bug must not stop the tracker
            self.log_unexpected(exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    self._close(conn)

    def shutdown(self):
        """Stop :meth:`serve_forever` running in another thread, and wait for it."""
        self._stop = True
        self._stopped.wait(10)

    def server_close(self):
        for conn in list(self._conns.values()):
            self._close(conn)
        self._epoll.close()
        self.listener.close()

    # -- connections --

    def _accept(self):
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._conns:
                    self._evict_oldest()
                    continue
                return  # ECONNABORTED and the like: that client is gone
            ip = address[0]
            if self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
                self.stats["refused"] += 1
                sock.close()
                continue
            if len(self._conns) >= self.max_connections:
                self._evict_oldest()  # may be this host's: count after it
            conn = _Conn(sock, ip, time.monotonic() + self.request_timeout)
            self._conns[sock.fileno()] = conn
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            self.stats["accepted"] += 1
            # Under load the request is usually there already: read it without a trip
            # through epoll.
            self._read(conn)
            if conn.sock is not None and not conn.registered:
                self._epoll.register(sock.fileno(), _OUT if conn.out is not None else _IN)
                conn.registered = True

    def _evict_oldest(self):
        # The oldest connection has had the longest to send its request: when one must go,
        # it is the one most likely to be a slowloris and least likely to be a peer.
        self.stats["evicted"] += 1
        self._close(next(iter(self._conns.values())))

    def _expire(self, now):
        while self._conns:
            conn = next(iter(self._conns.values()))
            if conn.deadline > now:
                return
            self.stats["timed_out"] += 1
            if conn.out is None:
                try:
                    conn.sock.send(_response(failure(
                        f"request not complete within {self.request_timeout:g} s"), TEXT), _NOWAIT)
                except OSError:
                    pass
            self._close(conn)

    def _close(self, conn):
        sock, conn.sock = conn.sock, None
        if sock is None:
            return
        # Closing the socket takes it out of the epoll set: no unregister call needed.
        del self._conns[sock.fileno()]
        left = self._per_ip[conn.ip] - 1
        if left:
            self._per_ip[conn.ip] = left
        else:
            del self._per_ip[conn.ip]
        sock.close()

    def _ready(self, conn):
        if conn.out is not None:
            self._write(conn)
        else:
            self._read(conn)
            if conn.out is not None and conn.sock is not None:
                self._epoll.modify(conn.sock.fileno(), _OUT)

    def _read(self, conn):
        try:
            data = conn.sock.recv(MAX_REQUEST, _NOWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if conn.drain:
            conn.drain = max(0, conn.drain - len(data)) if data else 0
            if not conn.drain:
                self._close(conn)
            return
        if data:
            conn.buf += data
        elif not conn.buf:
            self._close(conn)  # connected and left without a word
            return
        end = _head_end(conn.buf)
        if end >= 0 or not data:
            self._request(conn, end, eof=not data)
        elif len(conn.buf) > MAX_REQUEST:
            conn.drain = _DRAIN
            self._answer(conn, failure(f"request is over {MAX_REQUEST} bytes"), TEXT)

    def _write(self, conn):
        try:
            sent = conn.sock.send(conn.out, _NOWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if sent < len(conn.out):
            conn.out = memoryview(conn.out)[sent:]
            return
        conn.out = None
        if not conn.drain:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        if conn.registered:
            self._epoll.modify(conn.sock.fileno(), _IN)

    def _answer(self, conn, body, content_type, head_only=False):
        conn.out = _response(body, content_type, head_only)
        self._write(conn)

    # -- requests --

    def _request(self, conn, end, eof):
        """Answer the request in ``conn.buf`` whose headers end at ``end`` (-1: cut short by the
        client's EOF)."""
        if end < 0:
            self._answer(conn, failure("bad HTTP request: it ends before its headers do"), TEXT)
            return
        head = conn.buf[:end]
        parts = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            line = head.split(b"\n", 1)[0].rstrip(b"\r")
            self._answer(conn, failure(f"bad HTTP request line {show(line)}; a tracker answers "
                                       "'GET /announce?... HTTP/1.1'"), TEXT)
            return
        lowered = head.lower()
        length = _content_length(head, lowered)
        if length is None or length > MAX_REQUEST:
            self._answer(conn, failure("bad HTTP request: Content-Length is not a number of bytes "
                                       f"up to {MAX_REQUEST}"), TEXT)
            return
        if len(conn.buf) < end + length:
            if eof:
                self._answer(conn, failure("bad HTTP request: it ends before its body does"), TEXT)
            return  # read the body too: closing on unread data resets the connection
        method, target = parts[0], parts[1]
        try:
            body, content_type = self.tracker.handle(method, target, conn.ip, _bearer(head, lowered))
        except Exception as exc:  # noqa: BLE001 -- the tracker keeps serving; the log says why
            self.log_unexpected(exc)
            body, content_type = failure(
                f"internal tracker error ({type(exc).__name__}); see the tracker's log"
            ), TEXT
        self._answer(conn, body, content_type, head_only=method == b"HEAD")

    def log_unexpected(self, exc):
        """Log an unexpected exception's traceback once per kind, not once per request."""
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        kind = (type(exc).__name__, str(exc)[:200], tuple((f.filename, f.lineno) for f in where))
        if kind in self._logged or len(self._logged) >= 100:
            return
        self._logged.add(kind)
        sys.stderr.write(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} tracker: unexpected error (logged once):\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        sys.stderr.flush()


def _head_end(buf):
    """Where the body starts (after the blank line ending the headers), or -1."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buf.find(b"\n\n")
    return end + 2 if end >= 0 else -1


def _header(head, lowered, name):
    """The value of header ``name`` (lower-case bytes) in ``head`` (``lowered``: in lower
    case), or None."""
    start = lowered.find(b"\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 2
    stop = head.find(b"\n", start)
    return head[start:stop if stop >= 0 else len(head)].strip()


def _content_length(head, lowered):
    if b"content-length" not in lowered:
        return 0
    value = _header(head, lowered, b"content-length")
    if value is None:
        return 0
    return int(value) if value.isdigit() and len(value) < 10 else None


def _bearer(head, lowered):
    if b"authorization" not in lowered:
        return None
    value = _header(head, lowered, b"authorization")
    if value is None or not value.lower().startswith(b"bearer "):
        return None
    return value[7:].strip().decode("latin-1")


def _response(body, content_type, head_only=False):
    head = (
        b"HTTP/1.0 200 OK\r\nServer: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        % (_SERVER, content_type.encode(), len(body))
    )
    return head if head_only else head + body


def _listen(bind, port):
    host = bind.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # still refuses a taken port
        if family == socket.AF_INET6:
            # "::" serves IPv4 peers as well, whatever the system default is.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        # A whole fleet announces within the same second; the kernel caps this at somaxconn.
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LssdError(
                f"tracker port {port} on {bind} is already in use (another tracker or service "
                "listens there); stop it or choose another port (pillar lssd:tracker:port)"
            ) from None
        raise LssdError(f"tracker cannot listen on {bind} port {port}: {exc.strerror or exc}") from None
    return sock


def make_server(tracker, bind=DEFAULT_BIND, port=DEFAULT_PORT, **limits):
    """A :class:`Server` for ``tracker``, bound and listening (port 0: any free port)."""
    return Server(tracker, bind, port, **limits)


# -- the detached process ----------------------------------------------------------------------

_TRACKER_SETTINGS = ("interval", "min_interval", "numwant_default", "numwant_max", "peer_expiry",
                     "max_peers_per_torrent", "max_torrents", "max_peers_per_ip", "max_peers",
                     "announce_rate", "trusted_addresses", "forget_after")
_SERVER_SETTINGS = ("max_connections", "max_connections_per_ip", "request_timeout")


def _settings(config):
    """(bind, port, Tracker keyword arguments, Server keyword arguments) from config.json."""
    config = dict(config or {})
    if "state_dir" not in config:
        raise LssdError("tracker config has no state_dir; it names the minion's lssd directory")
    bind = config.get("bind") or DEFAULT_BIND
    if not isinstance(bind, str):
        raise LssdError(f"tracker setting bind={bind!r} must be an address such as '0.0.0.0'")
    port = config.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise LssdError(f"tracker setting port={port!r} must be an integer in 0..65535")
    tracker_kw = {name: config[name] for name in _TRACKER_SETTINGS if config.get(name) is not None}
    server_kw = {name: config[name] for name in _SERVER_SETTINGS if config.get(name) is not None}
    return bind, port, dict(tracker_kw, state_dir=config["state_dir"]), server_kw


def _raise_fd_limit():
    # Each connection is a file descriptor; the default soft limit (often 1024) would cap the
    # tracker below its own connection cap.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY or hard < 65536 else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def run(reporter):
    """Serve until SIGTERM (``reporter.stopping``). Binds first, so a taken port fails the start.
    Writes the admin token (mode 0600) into the run directory for :func:`client.fetch_status`."""
    bind, port, tracker_kw, server_kw = _settings(reporter.config)
    token = secrets.token_hex(32)
    write_atomic(os.path.join(reporter.run_dir, ADMIN_TOKEN_FILE), token, mode=0o600)
    tracker = Tracker(admin_token=token, **tracker_kw)
    _raise_fd_limit()
    server = make_server(tracker, bind, port, **server_kw)
    try:
        port = server.server_address[1]
        host = bind if bind.strip("[]") not in WILDCARDS else socket.gethostname()
        reporter.report(
            status="running",
            bind=bind,
            port=port,
            url=announce_url(host, port),
            status_url=status_url(bind, port),
            interval=tracker.interval,
        )
        sweep_every = max(0.2, min(tracker.peer_expiry / 2, 5.0))
        server.serve_forever(poll_interval=0.1, should_stop=lambda: reporter.stopping,
                             sweep_every=sweep_every)
    finally:
        server.server_close()
