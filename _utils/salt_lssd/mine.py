"""The Salt mine as lssd's authenticated channel: torrents and the tracker address.

A seeder publishes each tag's .torrent as ``lssd_torrent_<tag>``
(``lssd_torrent_<app>/<tag>`` under lssd:app) with the nonce of its seeding run; the
tracker minion publishes its announce URL as ``lssd_tracker``. Publishing waits until the
master holds the new entry (``mine.send`` returns before it does), so a peer started
afterwards never reads the previous one. Entries are checked on the way out: one
build per tag, and the torrent must match the info-hash and SHA-256 published beside it.
"""

import base64
import os
import random
import time
import zlib

from salt_lssd import LssdError, NotPublished, channel
from salt_lssd import torrent as metainfo
from salt_lssd.common import write_atomic

TORRENT_PREFIX = "lssd_torrent_"
TRACKER = "lssd_tracker"
# A mine entry goes to the master through the minion's event bus, which replaces a value larger
# than the minion's max_event_size (1 MiB by default) with "VALUE_TRIMMED" (bench/SCALE.md,
# section 2). The torrent's text may take all of that but what the rest of the entry needs
# (the deploy's certificate and key, the checks: a few KiB).
MAX_TORRENT_TEXT = 1024 * 1024 - 64 * 1024


def _torrent_text(data, mode):
    """The torrent as the entry carries it: base64, of its zlib form in tree mode, where a
    build's paths (in the torrent once per file) compress well."""
    return base64.b64encode(zlib.compress(data, 9) if mode == "tree" else data).decode("ascii")


def fits(data):
    """Whether a tree-mode torrent fits a mine entry."""
    return len(_torrent_text(data, "tree")) <= MAX_TORRENT_TEXT


def check_torrent_size(data, entries):
    """LssdError if a tree-mode torrent would not fit a mine entry, naming what to do."""
    size = len(_torrent_text(data, "tree"))
    if size > MAX_TORRENT_TEXT:
        raise LssdError(
            f"the tree-mode torrent of this build ({entries} files and directories) takes {size} bytes in "
            f"the mine entry (zlib, base64), over the limit of {MAX_TORRENT_TEXT} bytes (Salt's "
            "max_event_size of 1 MiB less room for the rest of the entry): deploy it with mode "
            "'archive' (lssd:mode), whose torrent stays under 200 KB whatever the build"
        )
    return size


def torrent_alias(tag, app=None):
    """The mine alias of ``tag``'s torrent in ``app``'s namespace. Neither a tag nor an app may
    hold '/', so ``<app>/<tag>`` names one (app, tag) pair only, and no default-namespace
    alias (which has no '/') can equal an app's."""
    return TORRENT_PREFIX + (tag if app is None else f"{app}/{tag}")


def publish(minion, alias, mine_function, matches, timeout, run_id=None, **kwargs):
    """``mine.send``, then wait until the master holds an entry for which ``matches(entry)``
    (asked through run ``run_id``'s channel, where this minion is one of the run's roles)."""
    minion.mine_send(alias, mine_function, **kwargs)
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        entry = read(minion, alias, None, run_id=run_id, given=f"L@{minion.id}").get(minion.id)
        if isinstance(entry, dict) and matches(entry):
            return entry
        if time.monotonic() >= deadline:
            raise LssdError(f"the master did not store mine entry {alias} within {timeout:g}s")
        # The master usually stores it within a fraction of a second, and a whole run waits
        # for the seeder's entry: ask soon, then less often.
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def read(minion, alias, role, run_id=None, given=None, why="whose entry to trust"):
    """``{minion: entry}`` published under ``alias``: in a planned run (``run_id``, with a
    master) what the run's channel serves, which holds only the run's own roles' entries;
    else the mine entries of the minions ``given`` or pillar ``lssd:targets:<role>`` names."""
    if run_id and not minion.masterless:
        return channel.published(minion, run_id, alias)
    return minion.mine_get(_target(minion, f"targets:{role}", why, given), alias)


def readers(minion):
    """``mine.send`` arguments that let only this deploy's minions read a torrent entry:
    the peers, the tracker and this seeder (which checks that the master holds it). The
    entry carries the passkey and, for SSL torrents, the deploy's key, so without the targets
    in this minion's pillar nothing is published (the orchestrate and the runner hand them
    to the roles). A masterless minion's mine is its own."""
    if minion.masterless:
        return {}
    who = [_target(minion, "targets:peer", "who may read the torrent"),
           _target(minion, "targets:tracker", "who may read the torrent")]
    return {"allow_tgt": " or ".join(f"( {t} )" for t in who + [f"L@{minion.id}"]), "allow_tgt_type": "compound"}


def torrent_entry(minion, tag, data, meta, nonce, run_id=None):
    """What a seeder publishes for ``tag``: the .torrent (base64) and what checks it, and
    the run it was published for (None outside an orchestrated run)."""
    return {
        "run_id": run_id,
        "tag": tag,
        "app": minion.app,
        "torrent": _torrent_text(data, meta.get("mode")),
        "encoding": "zlib" if meta.get("mode") == "tree" else None,
        "infohash": meta["infohash"],
        "sha256": meta["sha256"],
        "size": meta["size"],
        "nonce": nonce,
        "seeder": minion.id,
        "published": time.time(),
    }


def lookup_torrent(minion, tag, nonce=None, seeder=None, run_id=None):
    """The current entry for ``tag`` from ``seeder`` (a compound target; default: pillar
    lssd:targets:seeder), decoded and checked: ``data``, ``info``, ``entry``. NotPublished
    when no seeder publishes it (with ``nonce`` and for run ``run_id``, if given)."""
    alias = torrent_alias(tag, minion.app)
    published = read(minion, alias, "seeder", run_id, seeder, "which minion's torrent to trust")
    entries = {
        who: entry
        for who, entry in published.items()
        if isinstance(entry, dict) and entry.get("torrent")
        and (nonce is None or entry.get("nonce") == nonce)
        and (run_id is None or entry.get("run_id") == run_id)
    }
    if not entries:
        raise NotPublished(
            f"no seeder publishes tag {tag!r} in the mine (alias {alias})"
            + (f" with nonce {nonce}" if nonce else "")
            + (f" for run {run_id}" if run_id else "")
            + ": run lssd.seed_start on the seeder first"
        )
    if len({entry["sha256"] for entry in entries.values()}) > 1:
        raise LssdError(f"seeders {sorted(entries)} publish different builds for tag {tag!r}; stop all but one")
    who, entry = sorted(entries.items(), key=lambda kv: kv[1].get("published", 0))[-1]
    data = base64.b64decode(entry["torrent"])
    if entry.get("encoding") == "zlib":
        data = _inflate(data, tag, who)
    info = metainfo.read_torrent(data)
    if info["infohash"] != entry["infohash"] or info["lssd"].get("sha256") != entry["sha256"]:
        raise LssdError(f"mine entry for tag {tag!r} from {who} does not match its own torrent")
    return {"data": data, "info": info, "entry": entry}


def _inflate(data, tag, who):
    try:
        return zlib.decompress(data)
    except zlib.error as exc:
        raise LssdError(f"mine entry for tag {tag!r} from {who} is not valid zlib data: {exc}") from None


def await_torrent(minion, tag, run_id, timeout, seeder=None):
    """``lookup_torrent`` for run ``run_id``, waiting up to ``timeout`` seconds for the seeder
    to publish it: the orchestrate starts the tracker's registration while the seeder still
    packs."""
    return wait_for(minion, run_id, timeout, f"the torrent of {tag}",
                    lambda: lookup_torrent(minion, tag, seeder=seeder, run_id=run_id))


def wait_for(minion, run_id, timeout, what, attempt):
    """``attempt()`` until it stops raising NotPublished, for up to ``timeout`` seconds. Ends
    early, naming the reason, when the orchestrate marks run ``run_id`` aborted here (its
    seeder or tracker failed, so ``what`` will never come)."""
    deadline = time.monotonic() + timeout
    pause = 0.25
    while True:
        try:
            return attempt()
        except NotPublished as exc:
            reason = aborted(minion, run_id)
            if reason is not None:
                raise LssdError(f"run {run_id} was aborted before {what} was published: {reason}") from None
            if time.monotonic() >= deadline:
                raise NotPublished(f"{exc} (waited {timeout:g}s for run {run_id})") from None
        # Every waiting minion asks the master: soon at first (a small build is published
        # within seconds), then at most every 2 s (jittered, so a fleet does not ask in step)
        # while a large build is packed.
        time.sleep(min(_remaining(deadline), pause * random.uniform(0.8, 1.2)))
        pause = min(pause * 1.5, 2.0)


def _remaining(deadline):
    return max(0.0, deadline - time.monotonic())


# A marker matters only while its run's roles wait, which lssd:job_timeout bounds; a day is
# far beyond any run, so older markers are dropped whenever a new one is written.
ABORT_MARKER_SECONDS = 86400


def abort(minion, run_id, reason):
    """Mark run ``run_id`` aborted on this minion, so that its waits end (``await_torrent``)."""
    marker = minion.layout.aborted(run_id)
    write_atomic(marker, str(reason).encode("utf-8", "replace"))
    _prune_markers(os.path.dirname(marker), time.time() - ABORT_MARKER_SECONDS)
    return {"run_id": run_id, "aborted": True, "comment": f"run {run_id} aborted here: {reason}"}


def _prune_markers(directory, older_than):
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass  # another abort pruned it first


def aborted(minion, run_id):
    """The reason run ``run_id`` was aborted on this minion, or None."""
    try:
        with open(minion.layout.aborted(run_id), "rb") as fh:
            return fh.read().decode("utf-8", "replace") or "aborted"
    except FileNotFoundError:
        return None


def _target(minion, name, why, given=None):
    """The compound target ``given`` or pillar ``lssd:<name>``. Required with a master: any
    accepted minion may send a mine entry, so entries are read only from the targeted roles."""
    if given:
        return given
    if minion.masterless:
        return "*"
    try:
        return minion.setting(name)
    except LssdError:
        raise LssdError(
            f"lssd:{name} is not set on {minion.id}: it says {why}. The orchestrate and "
            f"salt-run lssd.deploy hand it to every role; set it in pillar for manual runs"
        ) from None


def tracker_url(minion):
    """The one announce URL the tracker minions published; LssdError for none or several."""
    published = read(minion, TRACKER, "tracker", minion.setting("run_id"), why="whose tracker address counts")
    urls = sorted({v["url"] for v in published.values() if isinstance(v, dict) and v.get("url")})
    if len(urls) == 1:
        return urls[0]
    if not urls:
        raise NotPublished(
            "no tracker address: set pillar lssd:tracker:host, pass tracker=, or start "
            "the tracker first (lssd.tracker_start publishes it to the mine)"
        )
    raise LssdError(f"several trackers are published in the mine ({', '.join(urls)}); pass tracker=")
