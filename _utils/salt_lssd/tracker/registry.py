"""The torrents a tracker serves: one file per info-hash under ``Layout(state_dir).allowed``.

The execution module registers a deploy's torrent here (:func:`allow`) and the tracker process
reads it (:func:`lookup`), so registering needs no connection to the running tracker. A
registration may carry a passkey: the tracker then answers for that info-hash only to requests
that present it, so a host that learns the info-hash alone learns nothing. The files are mode
0600 because they hold the passkeys.

A registration is not kept for ever: the tracker forgets one whose swarm has had no peer for
a while (:func:`forget`), passkey and all, so neither its status nor this directory grows with
every tag ever deployed. A file's mtime is when its torrent last had peers (or was
registered), so a restarted tracker knows how long each has been idle.
"""

import os
import re
import secrets

from salt_lssd import LssdError
from salt_lssd.common import Layout, read_json, validate_app, validate_tag, write_json_atomic

_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
# 64 bits at least, so guessing one is hopeless against a tracker answering thousands of
# requests a second; 512 bits at most, so it fits a URL comfortably.
_PASSKEY = re.compile(r"[0-9a-fA-F]{16,128}")
PASSKEY_BYTES = 16


def validate_infohash(infohash_hex):
    """Return ``infohash_hex`` in lower case if it is 40 hex digits, else raise LssdError."""
    if not isinstance(infohash_hex, str) or not _HEX40.fullmatch(infohash_hex):
        raise LssdError(
            f"info-hash {infohash_hex!r} is not 40 hexadecimal digits "
            "(the SHA-1 info-hash of a torrent, as create_torrent returns it)"
        )
    return infohash_hex.lower()


def validate_passkey(passkey):
    """Return ``passkey`` in lower case if it is 16 to 128 hex digits (or None), else raise."""
    if passkey is None:
        return None
    if not isinstance(passkey, str) or not _PASSKEY.fullmatch(passkey):
        shown = passkey if not isinstance(passkey, str) else passkey[:8] + "..." * (len(passkey) > 8)
        raise LssdError(
            f"passkey {shown!r} is not 16 to 128 hexadecimal digits "
            "(make one with salt_lssd.tracker.new_passkey())"
        )
    return passkey.lower()


def new_passkey():
    """A fresh random passkey, as hex."""
    return secrets.token_hex(PASSKEY_BYTES)


def allow(state_dir, infohash_hex, tag, passkey=None, app=None):
    """Register a torrent with the tracker serving ``state_dir``; a running tracker serves it
    from its next announce on. With ``passkey`` (hex), only requests carrying
    ``passkey=<hex>`` are answered for it. ``app``: the lssd:app namespace the tag belongs to
    (shown in the tracker's status, so one tag of two apps is told apart). Returns
    ``{"infohash", "tag", "app", "protected", "path", "changed"}``; ``changed`` is False when
    the same registration was already there."""
    infohash = validate_infohash(infohash_hex)
    validate_tag(tag)
    passkey = validate_passkey(passkey)
    path = os.path.join(Layout(state_dir).allowed, infohash)
    record = {"tag": tag, "infohash": infohash}
    if app is not None:
        record["app"] = validate_app(app)
    if passkey is not None:
        record["passkey"] = passkey
    changed = read_json(path) != record
    if changed:
        write_json_atomic(path, record)  # mode 0600: the record holds the passkey
    else:
        os.utime(path)  # registered again: idle from now on, not since the first time
    return {"infohash": infohash, "tag": tag, "app": app, "protected": passkey is not None, "path": path,
            "changed": changed}


def idle_since(state_dir, infohash_hex):
    """The wall-clock time ``infohash_hex`` last had peers (or was registered); None if it is
    not registered."""
    try:
        return os.stat(os.path.join(Layout(state_dir).allowed, infohash_hex)).st_mtime
    except FileNotFoundError:
        return None


def mark_active(state_dir, infohash_hex):
    """Record that ``infohash_hex`` has peers now (its idle time starts again)."""
    try:
        os.utime(os.path.join(Layout(state_dir).allowed, infohash_hex))
    except FileNotFoundError:
        pass  # forgotten or unregistered meanwhile


def forget(state_dir, infohash_hex, idle_since_time):
    """Remove the registration of ``infohash_hex`` if it is still idle since
    ``idle_since_time`` (one registered again meanwhile stays); returns whether it went."""
    path = os.path.join(Layout(state_dir).allowed, infohash_hex)
    try:
        if os.stat(path).st_mtime > idle_since_time:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def lookup(state_dir, infohash_hex):
    """``{"tag", "infohash", "passkey"}`` (passkey None if unprotected) of a registered torrent,
    or None if ``infohash_hex`` (lower-case hex) is not registered."""
    record = read_json(os.path.join(Layout(state_dir).allowed, infohash_hex))
    if not isinstance(record, dict):
        return None
    passkey = record.get("passkey")
    return {"tag": record.get("tag"), "app": record.get("app"), "infohash": infohash_hex,
            "passkey": passkey if isinstance(passkey, str) else None}


def infohashes(state_dir):
    """The info-hashes (lower-case hex) registered under ``state_dir``."""
    try:
        names = os.listdir(Layout(state_dir).allowed)
    except FileNotFoundError:
        return []
    return [n for n in names if _HEX40.fullmatch(n) and n == n.lower()]  # not write_json_atomic's temps


def registered(state_dir):
    """``{infohash hex: {"tag", "infohash", "protected"[, "app"]}}`` for every torrent registered under
    ``state_dir``; passkeys stay in the files."""
    found = {}
    for name in infohashes(state_dir):
        record = lookup(state_dir, name) or {"tag": None, "app": None, "passkey": None}
        found[name] = {"tag": record["tag"], "infohash": name, "protected": record["passkey"] is not None}
        if record["app"]:  # a tag of an lssd:app namespace
            found[name]["app"] = record["app"]
    return found
