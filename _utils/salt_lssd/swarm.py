"""The swarm clients: a seeder and a peer, each one libtorrent session in a detached process.

The seeder serves one archive (seed mode: the data was just hashed, so no recheck) until it
is stopped. The peer downloads one archive into the state directory, reports progress, and
after completion keeps seeding for ``linger`` seconds so late peers still find pieces among
their neighbours, then exits by itself. Installing the archive is not done here: the Salt job
waiting on the peer verifies the SHA-256 and installs it (install.py), so a failed install
never takes the swarm down with it.

A tree-mode torrent (see ``tree``) is served from the build directory itself and downloaded
into the directory the job names. Where the job placed the manifest and the files this host
holds (``delta``) before the start (``placed``), their pieces count as had from the first;
with ``manifest_first`` the peer fetches the manifest alone and waits for the job to place the
files before it wants the rest, with the same result.
Its lingering is a separate seed-only process over the installed tree (``_LingerLoop``).

Both are driven from libtorrent's alert loop; every second a ``state_update_alert`` (asked for
with ``post_torrent_updates``) refreshes ``state.json`` for ``lssd.status`` and for the
waiting job.
"""

import errno
import json
import os
import re
import time

from salt_lssd import LssdError, credentials, tracker

# Peer-id prefixes (Azureus style) that tell the seeder from other peers, so a peer can report
# how many bytes came from the seeder and how many from its neighbours.
SEEDER_FINGERPRINT = "-LS0100-"
PEER_FINGERPRINT = "-LP0100-"
_SEEDER_PID = SEEDER_FINGERPRINT.encode()
# Seconds before announcing again after the tracker refused us or could not be reached.
_TRACKER_RETRY = 2
# Piece slices (see _PeerLoop.update_slice): a peer's own part of the piece space comes first
# (priority 7), the rest after it (4; 1 would starve it while the own part is not done).
_SLICE_PRIORITY, _REST_PRIORITY = 7, 4
# Ask the tracker for our slice at start, then 1, 2, 4, 8 and 16 s later: peers of a fleet
# arrive over some seconds and each answer counts the peers that asked so far.
_SLICE_POLLS = (0, 1, 2, 4, 8, 16)
_SLICE_TIMEOUT = 2
# A peer with no connection to anyone gives up after this many seconds when the tracker never
# answered (it is unreachable) ...
TRACKER_GRACE = 30
# ... or when the tracker answers but no seeder or peer is left to send the rest: waiting the
# whole timeout would only hide that the source is gone.
NO_SOURCE_GRACE = 15
# A peer connected to peers but to no seed gives up when some piece it wants is on none of them
# and none of those pieces came back for this many seconds: the seeder is gone before anyone
# had a full copy, and the peers would only trade what they hold until the timeout.
LOST_SOURCE_GRACE = 20
# A peer whose pieces failed their hash check gives up once this many failed, or once no
# byte more arrived for a few seconds: its sources are banned and the rest of the swarm does
# not have those pieces (their one source is corrupt).
_HASH_FAILS, _CORRUPT_GRACE = 3, 5


def check_overrides(overrides, name="libtorrent_settings"):
    """``overrides`` (a dict of libtorrent setting -> value) checked against libtorrent's names
    and types; returns it (None for empty). LssdError names the first bad entry."""
    if overrides in (None, "", {}):
        return None
    if not isinstance(overrides, dict):
        raise LssdError(f"{name} {overrides!r} must be a mapping of libtorrent setting names to values")
    import libtorrent as lt

    defaults = lt.default_settings()
    for key, value in overrides.items():
        if key not in defaults:
            raise LssdError(
                f"{name}: {key!r} is not a libtorrent {lt.__version__} setting "
                "(see libtorrent's settings_pack reference)"
            )
        want = type(defaults[key])
        if type(value) is not want:  # bool is an int subclass: compare exact types
            raise LssdError(
                f"{name}: {key} = {value!r} must be of type {want.__name__} "
                f"(libtorrent's default is {defaults[key]!r})"
            )
    return dict(overrides)


def settings(role, listen="0.0.0.0:0", overrides=None):
    """libtorrent settings for a datacenter swarm. Every departure from the default says why."""
    import libtorrent as lt

    pack = {
        "listen_interfaces": listen,
        # Closed datacenter swarm: peers come from our tracker only. DHT/LSD/UPnP/NAT-PMP
        # would broadcast or reach out of the datacenter for nothing.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        # Several hosts can share one address (NAT, tests on loopback): tell peers apart by
        # port, not by IP.
        "allow_multiple_connections_per_ip": True,
        # TCP only. uTP's congestion control costs a lot of CPU per byte (alone it saturated
        # the 2 lab cores) and buys nothing on a datacenter LAN.
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        # No tit-for-tat: every peer is ours, so everyone is unchoked (-1 = unlimited slots).
        # Choking only delays pieces that would be passed on (a large part of the gap between
        # stock and tuned settings in the lab, bench/README.md).
        "choking_algorithm": 0,  # fixed_slots_choker, with unlimited slots below
        "unchoke_slots_limit": -1,
        # Keep ~1 s of requests outstanding instead of 3: with every peer unchoked a deep
        # queue spreads the same piece over many senders and makes the seeder send pieces
        # twice (~9% faster in the lab).
        "request_queue_time": 1,
        # ... and let a sender hold at most 4 of our requests (default 2000). A peer that
        # queues dozens of blocks at the seeder claims pieces the seeder then also sends to
        # others; with a short queue the seeder's upload goes to pieces nobody has yet.
        # bench/tune, N=8, F=100 MiB, U=50 Mbit/s: efficiency 0.65 -> 0.77, seeder upload
        # 1.52 -> 1.29 x F (bench/results/tune.json, variants current and inq4).
        "max_allowed_in_request_queue": 4,
        # Don't tell a peer we have a piece it already has: one message per piece per
        # connection saved (32 peers: ~50,000 per peer for 100 MiB) for nothing lost.
        "send_redundant_have": False,
        # Our tracker asks for re-announces every few seconds; libtorrent's default floor of
        # 300 s would ignore it and late peers would not be found.
        "min_announce_interval": 5,
        # A whole fleet connects at once; the default backlog of 5 drops incoming SYNs.
        "listen_queue_size": 512,
        # Bounded degree: a peer asks the tracker for 25 neighbours and keeps at most 50
        # connections (those it made and those made to it), so its per-connection work (HAVE
        # messages, requests, TLS sessions) stays the same whatever the fleet's size. In the
        # lab the bound changes nothing measurable (N=32 and N=64, bench/README.md: a bound of
        # 24 was as fast as the full mesh); without it a peer of a large fleet keeps 500. The
        # seeder keeps its 500: every peer's slice starts there.
        "connections_limit": 50 if role == "peer" else 500,
        "num_want": 25 if role == "peer" else 200,
        # Connect to the peers the tracker hands out straight away rather than 30 at a time.
        "torrent_connect_boost": 100,
        "connection_speed": 100,
        # Peers we talk to are on the same LAN: give up on dead ones quickly.
        "peer_connect_timeout": 5,
        "min_reconnect_time": 2,
        # Stopping a role should not wait 5 s for the tracker's answer to "stopped". The
        # seeder does not send it at all (0): it stops when the run ends, together with the
        # tracker, and waiting for an answer from a tracker that is stopping too only delays
        # the end of the deploy.
        "stop_tracker_timeout": 0 if role == "seeder" else 1,
        "peer_fingerprint": SEEDER_FINGERPRINT if role == "seeder" else PEER_FINGERPRINT,
        "user_agent": "salt-lssd",
        # No per-block alerts: at 32 peers they cost each peer ~400 Python calls a second on
        # cores the swarm needs for moving bytes. The seeder/peer split comes from
        # get_peer_info() once a second instead (_Loop.poll_sources).
        # Peer notifications are rare (bans, snubs, peer errors) and name who sent corrupt data.
        "alert_mask": (
            lt.alert.category_t.error_notification
            | lt.alert.category_t.peer_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.tracker_notification
            | lt.alert.category_t.storage_notification
        ),
    }
    if overrides:
        pack.update(overrides)
    return pack


def slice_priorities(num_pieces, rank, peers):
    """Piece priorities that put the ``rank``-th of ``peers`` contiguous parts first."""
    lo, hi = rank * num_pieces // peers, (rank + 1) * num_pieces // peers
    priorities = [_REST_PRIORITY] * num_pieces
    priorities[lo:hi] = [_SLICE_PRIORITY] * (hi - lo)
    return priorities


def slice_url(announce_url):
    """Our tracker's /slice URL for a torrent announcing to ``announce_url`` (None if not ours);
    the tracker's client module builds both, passkey included."""
    return tracker.slice_url(announce_url)


def run(role, reporter):
    try:
        _run(role, reporter)
    finally:
        if role == "peer":
            # The deploy's key a peer is given in its run directory serves this process
            # alone: it goes when the process ends (completed, failed, stopped or lingered).
            credentials.remove(reporter.run_dir)


def _run(role, reporter):
    import libtorrent as lt

    config = reporter.config
    with open(config["torrent"], "rb") as fh:
        ti = lt.torrent_info(lt.bdecode(fh.read()))
    listen = config.get("listen", "0.0.0.0:0")
    if config.get("ssl_cert"):
        # An SSL torrent's peers connect only over TLS: listen on SSL sockets alone, so a
        # port scan finds nothing that speaks plain BitTorrent.
        listen = ",".join(part.strip() + "s" for part in listen.split(","))
    ses = lt.session(settings(role, listen, config.get("settings")))
    # A tree-mode peer whose job places the manifest and the files this host holds: before
    # the start (``placed``), or while this process starts (``await_go``).
    placed = _await_go(reporter, config) if config.get("await_go") else config.get("placed")
    have = None if placed is None else placed_pieces(ti.layout(), set(placed))
    handle, port = add_torrent(lt, ses, ti, config, role, have=have)
    loop = _SeederLoop if role == "seeder" else _LingerLoop if config.get("seed_only") else _PeerLoop
    loop(reporter, ses, handle, config, port).run()


def read_go(run_dir):
    """The paths the job placed, from the ``go`` file it writes in the run directory once it
    has placed them; None while there is none."""
    path = os.path.join(run_dir, "go")
    try:
        with open(path, "rb") as fh:
            return set(json.loads(fh.read() or b"{}").get("placed") or ())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise LssdError(f"cannot read the job's go file {path}: {exc}") from None


def _await_go(reporter, config):
    """Wait for the job's ``go``; the placed paths. A job that dies while it places files
    (kill -9) leaves no process behind: this one ends when the job's process is gone."""
    reporter.report(status="placing")
    waited = float(config.get("timeout", 3600)) + 30
    deadline = time.monotonic() + waited
    job = config.get("job_pid")
    while not reporter.stopping:
        placed = read_go(reporter.run_dir)
        if placed is not None:
            return placed
        if job and not _alive(job):
            raise LssdError(f"the job that started this download (pid {job}) ended before it placed the held files")
        if time.monotonic() >= deadline:
            raise LssdError(f"the job did not finish placing the held files within {waited:g}s (timeout + 30 s)")
        time.sleep(0.02)
    raise LssdError("stopped while the job placed files")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def add_torrent(lt, ses, ti, config, role, have=None):
    """Add the one torrent of this process to ``ses``; returns (handle, listen port).
    ``have``: piece flags libtorrent takes as had without checking them (a delta deploy's
    placed files, each already checked against the manifest)."""
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = config["save_path"]
    # Not auto-managed: libtorrent's queueing must never pause our one torrent.
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    if config.get("tree"):
        atp.renamed_files = tree_paths(ti.layout(), config["tree"]["root"], config["tree"]["manifest"])
    if role == "seeder" or config.get("seed_only"):
        # The data was hashed moments ago (to make the torrent, or to install it); don't read
        # it all again. Each piece is still checked the first time a peer asks for it.
        atp.flags |= lt.torrent_flags.seed_mode
    if config.get("manifest_first"):
        # A delta deploy needs the manifest before it can place the files it already holds:
        # only the first file is wanted until the job says go (see _PeerLoop.check_go).
        atp.file_priorities = [_SLICE_PRIORITY] + [0] * (ti.num_files() - 1)
    if have is not None:
        atp.have_pieces = have
    handle = ses.add_torrent(atp)
    port = ses.listen_port()
    if config.get("ssl_cert"):
        handle.set_ssl_certificate(config["ssl_cert"], config["ssl_key"], config["ssl_dh"])
        port = ses.ssl_listen_port()
    return handle, port


def placed_pieces(files, placed):
    """Piece flags of a tree torrent: True for a piece whose every file is the manifest (the
    first file, downloaded and checked) or in ``placed`` (paths below the tree). Pad files
    hold nothing; a piece shared with a file not placed is not had."""
    length = files.piece_length()
    have = [False] * files.num_pieces()
    missing = set()
    for index in range(files.num_files()):
        size = files.file_size(index)
        if not size or files.file_flags(index) & files.flag_pad_file:
            continue
        first, last = files.file_offset(index) // length, (files.file_offset(index) + size - 1) // length
        held = index == 0 or files.file_path(index).split("/", 1)[-1] in placed
        for piece in range(first, last + 1):
            if held:
                have[piece] = True
            else:
                missing.add(piece)
    for piece in missing:
        have[piece] = False
    return have


def tree_paths(files, root, manifest):
    """libtorrent's ``renamed_files`` that read (or write) a tree-mode torrent's files where
    they are: the manifest (the first file) at ``manifest``, every other file below ``root``
    (pad files are never on disk). Absolute paths: the torrent's name plays no part."""
    renamed = {0: manifest}
    for index in range(1, files.num_files()):
        if not files.file_flags(index) & files.flag_pad_file:
            renamed[index] = os.path.join(root, files.file_path(index).split("/", 1)[1])
    return renamed


class _Loop:
    def __init__(self, reporter, ses, handle, config, port):
        self.reporter = reporter
        self.ses = ses
        self.handle = handle
        self.config = config
        self.port = port
        self.started = reporter.started
        self.error = None
        self.tracker_error = None
        # Payload received from the seeder (told apart by its peer-id prefix), from
        # get_peer_info() counters: `seeder_conns` holds the live connections' counts,
        # `seeder_closed` what closed connections had received. The rest of the exact payload
        # total is what came from other peers.
        self.seeder_conns = {}
        self.seeder_closed = 0
        self.announced = False  # a tracker reply came at least once
        self.hash_fails = []  # piece indices that failed their hash check
        self.banned = []  # "ip:port" of peers libtorrent banned for sending corrupt data

    def status_fields(self, st):
        return {
            "progress": round(st.progress * 100, 2),
            "total_done": st.total_done,
            "total_wanted": st.total_wanted,
            "downloaded": st.total_payload_download,
            "uploaded": st.all_time_upload,
            # Bytes received twice (end game) and bytes of pieces that failed their hash check.
            "redundant": st.total_redundant_bytes,
            "failed": st.total_failed_bytes,
            "download_rate": st.download_payload_rate,
            "upload_rate": st.upload_payload_rate,
            "peers": st.num_peers,
            "seeds": st.num_seeds,
            "tracker_error": self.tracker_error,
            "port": self.port,
        }

    @property
    def from_seeder(self):
        return self.seeder_closed + sum(self.seeder_conns.values())

    def poll_sources(self):
        """Refresh the payload counts of the connections to the seeder.

        A connection that went away keeps what it had counted at the last poll (a second's
        worth at most is lost, and only when the seeder connection drops mid-transfer).
        """
        live = {}
        for peer in self.handle.get_peer_info():
            if peer.pid.to_bytes().startswith(_SEEDER_PID):
                live[(tuple(peer.ip), peer.pid.to_bytes())] = peer.total_download
        for key, count in self.seeder_conns.items():
            if live.get(key, -1) < count:  # closed, or a new connection from the same peer
                self.seeder_closed += count
        self.seeder_conns = live

    def handle_alerts(self, lt):
        for alert in self.ses.pop_alerts():
            if isinstance(alert, lt.state_update_alert):
                for st in alert.status:
                    self.on_status(st)
            elif isinstance(alert, lt.torrent_finished_alert):
                # libtorrent 2 hashes pieces from memory: "finished" can come before the last
                # writes reach the file. Flush, and call it finished when that is done.
                self.handle.flush_cache()
                self.poll_sources()  # before libtorrent closes seed-to-seed connections
            elif isinstance(alert, lt.cache_flushed_alert):
                if self.handle.status().is_seeding:
                    self.on_finished()
                else:
                    self.on_wanted_done()
            elif isinstance(alert, lt.tracker_error_alert):
                self.tracker_error = _without_query(alert.message())
                # libtorrent backs off for minutes after a refusal, but ours is usually brief:
                # a seeder starts before tracker_allow registers its torrent (the tracker
                # learns the torrent from the mine entry seed_start publishes), or the
                # tracker is restarting. Ask again soon.
                self.handle.force_reannounce(_TRACKER_RETRY)
            elif isinstance(alert, lt.tracker_reply_alert):
                self.tracker_error = None
                self.announced = True
            elif isinstance(alert, lt.hash_failed_alert):
                self.hash_fails.append(alert.piece_index)
                self.on_hash_failed(alert.piece_index)
            elif isinstance(alert, lt.peer_ban_alert):
                self.banned.append("%s:%d" % tuple(alert.ip))
            elif isinstance(alert, lt.torrent_checked_alert):
                self.on_checked()
            elif isinstance(alert, lt.file_error_alert):
                self.error = file_error(alert)
            elif isinstance(alert, lt.torrent_error_alert):
                self.error = alert.message()
            elif isinstance(alert, lt.listen_failed_alert):
                self.error = alert.message()

    def run(self):
        import libtorrent as lt

        next_update = 0.0
        try:
            while not self.reporter.stopping and not self.done():
                self.ses.wait_for_alert(100)  # also how soon SIGTERM is noticed
                now = time.monotonic()
                if now >= next_update:
                    self.ses.post_torrent_updates()
                    next_update = now + 1.0
                    self.tick(now)
                self.handle_alerts(lt)
                self.poll()
                if self.error:
                    raise LssdError(self.error)
        finally:
            # A last report: state updates only come while something changes, and the
            # totals (seeder upload, seeder/peer split) must be final in state.json.
            self.on_status(self.handle.status())
            self.ses.remove_torrent(self.handle)  # announces "stopped" (bounded by stop_tracker_timeout)
            self.ses.pause()

    def done(self):
        return False

    def on_finished(self):
        pass

    def on_checked(self):
        pass

    def on_wanted_done(self):
        """Every wanted piece is on disk, but not all pieces are wanted."""

    def on_hash_failed(self, piece):
        pass

    def tick(self, now):
        """Once a second: the checks that end the run with a reason (raise LssdError)."""

    def poll(self):
        """Every turn of the loop (at most 100 ms apart): what must not wait for the tick."""

    def on_status(self, st):
        self.reporter.report(status=self.current_status(), **self.status_fields(st))


def file_error(alert):
    """The words for a libtorrent file error: the file, the operation's cause, and for a full
    disk "no space left on device" with the directory, which is what the operator must fix."""
    path, code = alert.filename(), alert.error
    if code.value() == errno.ENOSPC:
        return f"no space left on device in {os.path.dirname(path) or '.'} (writing {path})"
    return f"cannot read or write {path}: {code.message()}"


def _without_query(text):
    """``text`` with every URL's query cut: the passkey stays out of messages and events."""
    return re.sub(r"(https?://[^\s?]+)\?[^\s)\]]*", r"\1", text)


def _archive_identity(path):
    """What tells a changed archive: (size, mtime, inode, device); None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class _SeederLoop(_Loop):
    def __init__(self, *args):
        super().__init__(*args)
        tree = self.config.get("tree")
        name = self.handle.torrent_file().name()
        self.archive = tree["root"] if tree else os.path.join(self.config["save_path"], name)
        # A tree has no one identity to watch; its pieces are checked as they are first asked for.
        self.identity = None if tree else _archive_identity(self.archive)
        self.reporter.report(status="seeding", port=self.port, archive=self.archive)

    def current_status(self):
        return "seeding"

    def tick(self, now):
        # Pieces are hashed once, when the torrent is made (seed mode): an archive rewritten
        # since would be served as it is now, and peers would wait for pieces that never fit.
        if self.identity is not None and _archive_identity(self.archive) != self.identity:
            self.reporter.report(archive_changed=True)
            raise LssdError(
                f"archive {self.archive} changed on disk (size, mtime or inode) or cannot be read since "
                f"seeding started; stopped seeding: make the torrent again (lssd.create_torrent)"
            )

    def on_hash_failed(self, piece):
        # Seed mode checks each piece the first time a peer asks for it.
        self.reporter.report(archive_changed=True)
        if self.config.get("tree"):
            raise LssdError(
                f"build tree {self.archive} changed since its torrent was made: piece {piece} "
                f"({_piece_file(self.handle, piece)}) does not match the torrent; stopped seeding: a "
                "tree-mode build must not change while it is seeded; make the torrent again "
                "(lssd.create_torrent with rebuild) or bump the tag"
            )
        raise LssdError(
            f"archive {self.archive} is corrupt: piece {piece} does not match the torrent; "
            "stopped seeding: make the torrent again (lssd.create_torrent)"
        )


def _unavailable(handle, st):
    """How many pieces we want and lack that no connected peer has."""
    wanted = handle.get_piece_priorities()
    return sum(1 for count, priority, had in zip(handle.piece_availability(), wanted, st.pieces)
               if not count and priority and not had)


def _piece_file(handle, piece):
    files = handle.torrent_file().layout()
    return files.file_path(files.file_index_at_piece(piece))


class _PeerLoop(_Loop):
    def __init__(self, *args):
        super().__init__(*args)
        self.finished_at = None
        # Piece slices: [rank, peers] from the tracker, and when to ask it next.
        self.slice = None
        self.slice_polls = list(_SLICE_POLLS) if self.config.get("slices", True) else []
        urls = [entry["url"] for entry in self.handle.trackers()]
        self.slice_url = slice_url(urls[0]) if urls else None
        self.linger = float(self.config.get("linger", 30))
        # A peer that never completes must not run forever: the Salt job gives up after
        # `timeout`, and so does the process (with some slack for its own last report).
        self.deadline = time.time() + float(self.config.get("timeout", 3600)) + 30
        self.alone_since = None  # since when no peer is connected, while downloading
        self.last_done = (-1, 0.0)  # (total_done, when it last grew)
        self.lost = None  # (wanted pieces on no connected peer, since when no fewer), while no seed is connected
        # Delta deploys: "manifest" while only the manifest is wanted, "placing" once it is on
        # disk and the job places the files this host already holds, None after the go.
        self.phase = "manifest" if self.config.get("manifest_first") else None
        self.reporter.report(status="downloading", port=self.port, progress=0.0)
        self.update_slice(time.time())

    def on_wanted_done(self):
        if self.phase == "manifest":
            self.phase = "placing"
            self.reporter.report(status="manifest")

    def check_go(self):
        """Once the job has placed what it could (it writes ``go`` in the run directory, with
        the placed files' paths): want every file, with the pieces of the placed files as had,
        so only the rest is downloaded. The job hashed each placed file against the manifest
        while it copied it, so libtorrent does not read them again: the torrent is added anew
        with those pieces had (a running torrent has no call that marks pieces had unchecked)."""
        import libtorrent as lt

        placed = read_go(self.reporter.run_dir)
        if placed is None:
            return
        self.phase = None
        ti = self.handle.torrent_file()
        self.ses.remove_torrent(self.handle)
        config = dict(self.config, manifest_first=False)
        self.handle, _ = add_torrent(lt, self.ses, ti, config, "peer", have=placed_pieces(ti.layout(), placed))
        self.reporter.report(status="downloading")
        self.update_slice(time.time())

    def on_checked(self):
        # Data of an earlier attempt at this info-hash was checked piece by piece: what
        # passed is kept, and the rest is downloaded.
        # Alerts come in batches: what we have now less what arrived since is what was reused.
        st = self.handle.status()
        fetched = st.total_payload_download - st.total_redundant_bytes - st.total_failed_bytes
        self.reporter.report(reused=max(0, st.total_done - fetched))

    def poll(self):
        if self.phase == "placing":
            self.check_go()

    def tick(self, now):
        if self.phase == "placing":  # nothing is wanted while the job places files
            self.last_done = (-1, now)
            return
        st = self.handle.status()
        if self.finished_at is not None or st.is_seeding:
            return
        alone = st.num_peers == 0
        self.alone_since = (self.alone_since or now) if alone else None
        if st.total_done != self.last_done[0]:
            self.last_done = (st.total_done, now)
        if self.hash_fails:
            self._check_corrupt(now - self.last_done[1])
        waited = now - self.alone_since if alone else 0
        if not self.announced and waited >= TRACKER_GRACE:
            url = _without_query((self.handle.trackers() or [{}])[0].get("url") or "")
            raise LssdError(
                f"tracker {url} unreachable or refusing us: no successful announce and no peer "
                f"for {TRACKER_GRACE}s"
                + (f" (last error: {_without_query(self.tracker_error)})" if self.tracker_error else "")
            )
        if self.announced and waited >= NO_SOURCE_GRACE and self.lost is None:
            raise LssdError(
                f"no source left at {round(st.progress * 100, 2)}%: no seeder or peer connected for "
                f"{NO_SOURCE_GRACE}s although the tracker answers (was the seeder stopped, or did it "
                "fail? see lssd.status on the seeder)"
            )
        self._check_lost_source(st, now)

    def _check_lost_source(self, st, now):
        """Fail when no complete copy is left among the peers connected to us: no seed among
        them, some wanted piece on none of them, and that count not falling for
        LOST_SOURCE_GRACE s (a neighbour fed by a seeder we are not connected to lowers it).
        Peers trading what they hold keep each other connected, so the "no source left" check
        for a peer alone never fires then."""
        missing = 0
        if not st.num_seeds and not st.num_peers:
            # Left alone after the last copies went (the other peers gave up first): nothing
            # can come back, and the cause is still the lost seeder, not an empty swarm.
            missing = self.lost[0] if self.lost else 0
        elif not st.num_seeds and 0 <= st.distributed_copies < 1:
            # distributed_copies (the rarest piece's copies, ours included) is cheap: at 1 or
            # more every piece is somewhere, and the per-piece lists are not read.
            missing = _unavailable(self.handle, st)
        if not missing:
            self.lost = None
        elif self.lost is None or missing < self.lost[0]:
            self.lost = (missing, now)
        elif now - self.lost[1] >= LOST_SOURCE_GRACE:
            raise LssdError(
                f"no complete copy left in the swarm: the seeder is gone (at {round(st.progress * 100, 2)}%, "
                f"{st.num_peers} peers): {missing} wanted pieces are on none of the peers connected and "
                f"none came back for {LOST_SOURCE_GRACE}s (see lssd.status on the seeder)"
            )

    def _check_corrupt(self, stalled):
        """Fail on corrupt data: enough failed pieces, or no progress since for a few seconds."""
        if len(self.hash_fails) < _HASH_FAILS and stalled < _CORRUPT_GRACE:
            return
        sources = ", ".join(sorted(set(self.banned))) or "an unknown peer"
        self.reporter.report(corrupt=True)
        raise LssdError(
            f"corrupt data from {sources}: {len(self.hash_fails)} pieces failed their hash check "
            f"(first: piece {self.hash_fails[0]}); the source's archive does not match the torrent"
        )

    def current_status(self):
        if self.phase == "placing":
            return "manifest"
        return "lingering" if self.finished_at else "downloading"

    def update_slice(self, now):
        """Start on our own part of the piece space, as the tracker's ranking says.

        With every peer unchoked, peers that each pick the rarest pieces still ask the seeder
        for the same pieces, blind to what the others are fetching from it; the seeder then
        sends pieces twice and that is the time lost (in the lab T_last follows the seeder's
        upload / F, bench/README.md). With peer k of n preferring the k-th n-th of the pieces, the seeder's
        first copy of each piece goes to one peer and the others get it from that peer.
        bench/run, N=8, F=100 MiB, U=50 Mbit/s, three runs each: seeder upload 1.36-1.57 ->
        1.18-1.21 x F, efficiency 0.63-0.73 -> 0.81-0.82. At N=16 no gain measured (0.61,
        0.67 against 0.66, 0.68 without, 64 KiB pieces; TCP shares the seeder's uplink
        unevenly there, see bench/README.md), and no loss. Any failure leaves plain
        rarest-first: slices are an optimisation, never a reason to fail a download.
        """
        if self.phase or not self.slice_polls or self.slice_url is None:
            return
        if now < self.started + self.slice_polls[0]:
            return
        self.slice_polls.pop(0)
        try:
            rank, peers = tracker.fetch_slice(
                self.slice_url, self.handle.info_hashes().v1.to_bytes(), self.port, _SLICE_TIMEOUT
            )
        except LssdError as exc:
            self.reporter.report(slice_error=str(exc))
            return
        if [rank, peers] != self.slice:
            self.slice = [rank, peers]
            num_pieces = self.handle.torrent_file().num_pieces()
            self.handle.prioritize_pieces(slice_priorities(num_pieces, rank, peers))

    def on_status(self, st):
        fields = self.status_fields(st)
        if not self.finished_at:  # a seed receives nothing more: the split is final
            self.poll_sources()
            self.update_slice(time.time())
        fields["slice"] = self.slice
        fields["seeder_connections"] = len(self.seeder_conns)
        seeder = min(self.from_seeder, st.total_payload_download)
        fields.update(from_seeder=seeder, from_peers=st.total_payload_download - seeder)
        if self.finished_at:
            fields["finished"] = self.finished_at
            fields["seconds"] = round(self.finished_at - self.started, 3)
        self.reporter.report(status=self.current_status(), **fields)

    def on_finished(self):
        if self.finished_at is None:
            self.poll_sources()
            self.finished_at = time.time()
            self.ses.post_torrent_updates()

    def done(self):
        now = time.time()
        if self.finished_at is not None:
            return now >= self.finished_at + self.linger
        if now >= self.deadline:
            raise LssdError("download did not complete before the process deadline")
        return False

    def run(self):
        super().run()
        if self.finished_at is not None:
            self.reporter.report(status="done")


class _LingerLoop(_Loop):
    """Tree mode's lingering: seeds the installed tree (seed mode, no recheck: it was just
    verified) for ``linger`` seconds, then exits. A piece that no longer matches (the tree
    was changed after the install) ends it: the peer's deploy is done, only the sharing stops."""

    def __init__(self, *args):
        super().__init__(*args)
        self.until = self.started + float(self.config.get("linger", 30))
        self.reporter.report(status="lingering", port=self.port, finished=self.started)

    def current_status(self):
        return "lingering"

    def done(self):
        return time.time() >= self.until

    def on_hash_failed(self, piece):
        raise LssdError(
            f"the installed tree {self.config['tree']['root']} changed: piece {piece} "
            f"({_piece_file(self.handle, piece)}) no longer matches the torrent; stopped lingering"
        )

    def run(self):
        super().run()
        if not self.error and not self.reporter.stopping:
            self.reporter.report(status="done")
