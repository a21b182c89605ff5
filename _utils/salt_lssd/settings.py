"""Every lssd setting in one table: its default and the one check its values go through.

Values come from pillar (or the minion config) under ``lssd:``; a function argument given
explicitly wins over them. The execution module, the states and the detached processes all
read settings through :class:`Settings`, so a default or a rule is written once, here; the
SLS defaults (``salt/lssd/defaults.yaml``) and ``pillar.example`` are tested against this
table. Required settings have no default: a run without them fails naming the key.
"""

import difflib
import logging
import os

from salt_lssd import LssdError, install, pack, releases
from salt_lssd.common import validate_app, validate_tag
from salt_lssd.tracker.protocol import DEFAULT_FORGET_AFTER

REQUIRED = object()
log = logging.getLogger(__name__)
# How alike (difflib's ratio) an unknown key must be to a setting's name to be taken for a
# misspelling of it: 'destinaton_path' and 'destination_path' are, 'build_owner' and 'keep' not.
_TYPO_LIKENESS = 0.75


def _bool(value, name):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise LssdError(f"{name} {value!r} is not a boolean; allowed: true or false")


def number(value, name, minimum=0):
    """``value`` as a float of at least ``minimum``, else LssdError naming ``name``."""
    if isinstance(value, bool):
        raise LssdError(f"{name} {value!r} is not a number")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise LssdError(f"{name} {value!r} is not a number") from None
    if result < minimum:
        raise LssdError(f"{name} {value!r} is below the minimum of {minimum:g}")
    return result


def _seconds(minimum):
    return lambda value, name: number(value, name, minimum)


def _port(value, name):
    if isinstance(value, bool) or not str(value).strip().isdigit() or not 0 < int(str(value).strip()) < 65536:
        raise LssdError(f"{name} {value!r} is not a TCP port; allowed: 1-65535")
    return int(str(value).strip())


def _text(value, name):
    if not isinstance(value, str) or not value.strip():
        raise LssdError(f"{name} {value!r} must be a non-empty string")
    return value


def _absolute(value, name):
    value = _text(value, name)
    if not os.path.isabs(value):
        raise LssdError(f"{name} {value!r} must be an absolute path")
    return os.path.normpath(value)


def _optional(check):
    return lambda value, name: None if value in (None, "") else check(value, name)


def _tag(value, name):
    if isinstance(value, float):
        raise LssdError(
            f"{name} {value!r} is a number: YAML reads an unquoted tag such as 1.10 as the number "
            f"{value!r}; quote it (tag: '1.10')"
        )
    return validate_tag(value)


def _app(value, name):
    if isinstance(value, float):
        raise LssdError(f"{name} {value!r} is a number; quote it ('{value}')")
    return validate_app(value)


def _tracker_host(value, name):
    value = _text(value, name)
    if value.count(":") == 1 and "[" not in value:
        raise LssdError(
            f"{name} {value!r} holds a port; give the host alone and the port as lssd:tracker:port"
        )
    if "/" in value:
        raise LssdError(f"{name} {value!r} must be a host name or address, not a URL")
    return value


def _exclude(value, name):
    return pack.check_exclude(value, name)


def _compression(value, name):
    return pack.check_compression(value)


MODES = ("archive", "tree")


def _deploy_mode(value, name):
    if value not in MODES:
        raise LssdError(
            f"{name} {value!r} is not a deploy mode; allowed: archive (one packed archive, the "
            "default) or tree (the build's own files, piece-aligned, for delta deploys)"
        )
    return value


def _owner(value, name):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LssdError(f"{name} {value!r} must be a user or group name or a numeric id")
    return value


def _mode(value, name):
    install.parse_mode(value)
    return value


def _current(value, name):
    if value is None or value is False:
        return None
    if value is True:
        return releases.DEFAULT_LINK
    return releases.check_link_name(value)


def _keep(value, name):
    return releases.check_keep(value)


def _listen(value, name):
    value = _text(value, name)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise LssdError(f"{name} {value!r} must be '<address>:<port>' such as '0.0.0.0:6881' (port 0: any)")
    return value


def _libtorrent(value, name):
    from salt_lssd import swarm

    return swarm.check_overrides(value, name)


def _rollout(value, name):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LssdError(f"{name} {value!r} must be a count, a percentage such as '25%' or a target")
    return value


def _unreachable(value, name):
    if value not in ("fail", "skip"):
        raise LssdError(
            f"{name} {value!r} is not a policy for unreachable peers; allowed: fail (the run fails "
            "before any job, naming them) or skip (the others deploy, they are reported as down)"
        )
    return value


def _run_id(value, name):
    value = _text(str(value) if isinstance(value, int) and not isinstance(value, bool) else value, name)
    try:
        return validate_tag(value)
    except LssdError as exc:
        raise LssdError(f"{name} {value!r} is not a run id: {exc}") from None


def _sls_list(value, name):
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise LssdError(f"{name} {value!r} must be a list of SLS names such as ['app.restart']")
    return value


# name: (default, check). Nested pillar keys are written with ':' as in config.get.
TABLE = {
    "tag": (REQUIRED, _tag),
    "app": (None, _optional(_app)),
    "rollback_to": (None, _optional(_tag)),
    "seeder_files_path": (REQUIRED, _absolute),
    "path_is_file": (False, _bool),
    "exclude": (pack.DEFAULT_EXCLUDE, _exclude),
    "compression": (pack.DEFAULT_COMPRESSION, _compression),
    "mode": ("archive", _deploy_mode),
    "rebuild": (False, _bool),
    "destination_path": (REQUIRED, _absolute),
    "destination_owner": ("root", _optional(_owner)),
    "destination_group": ("root", _optional(_owner)),
    "destination_mode": ("0755", _optional(_mode)),
    "no_tag_directory": (False, _bool),
    "unsafe_please_delete": (False, _bool),
    "force": (False, _bool),
    "linger": (30, _seconds(0)),
    "progress_interval": (5, _seconds(0)),
    "timeout": (3600, _seconds(1)),
    "job_timeout": (600, _seconds(1)),
    "current": (False, _current),
    "keep": (None, _optional(_keep)),
    "state_dir": (None, _optional(_absolute)),
    "listen": ("0.0.0.0:0", _listen),
    "ssl": (True, _bool),
    "libtorrent_settings": ({}, _libtorrent),
    "tracker:port": (8998, _port),
    "tracker:host": (None, _optional(_tracker_host)),
    "tracker:bind": ("0.0.0.0", _text),
    # Below a minute a torrent registered by hand could be forgotten before its seeder starts.
    "tracker:forget_after": (DEFAULT_FORGET_AFTER, _seconds(60)),
    "targets:tracker": (REQUIRED, _text),
    "targets:seeder": (REQUIRED, _text),
    "targets:peer": (REQUIRED, _text),
    "batch": (None, _optional(_rollout)),
    "canary": (None, _optional(_rollout)),
    "hooks:sls": ([], _sls_list),
    "reach_timeout": (10, _seconds(1)),
    "unreachable": ("fail", _unreachable),
    # Set by the orchestrate (and salt-run lssd.deploy) for one run: the seeder's mine entry
    # carries it, and the run's tracker and peers take that entry, not an earlier one of the tag.
    "run_id": (None, _optional(_run_id)),
    # Set by the run too: how many peers it deploys, which spaces out each peer's progress events.
    "run_peers": (None, _optional(_seconds(0))),
}


def _known_keys():
    """``{parent: names}``: the keys each level under ``lssd:`` may hold ('' the top level).
    Only nested settings (``tracker:port``) make a level; a setting's own value, such as
    libtorrent_settings, is its check's business."""
    levels = {"": set()}
    for name in TABLE:
        parent, _, leaf = name.rpartition(":")
        levels[""].add(name.partition(":")[0])
        if parent:
            levels.setdefault(parent, set()).add(leaf)
    return levels


def unknown_keys(configured):
    """``[(key, nearest)]`` for each key under ``lssd:`` (the dict ``configured``) that names
    no setting: ``key`` as written (``lssd:tracker:prot``), ``nearest`` the setting it most
    likely misspells, or None when it is like none of them."""
    found = []
    levels = _known_keys()

    def walk(tree, parent):
        for key in sorted(tree, key=str):
            name = f"{parent}:{key}" if parent else str(key)
            known = levels[parent]
            if key in known:
                if name in levels and isinstance(tree[key], dict):
                    walk(tree[key], name)
                continue
            near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=_TYPO_LIKENESS)
            found.append((f"lssd:{name}", f"lssd:{parent + ':' if parent else ''}{near[0]}" if near else None))

    if isinstance(configured, dict):
        walk(configured, "")
    return found


def check_keys(configured):
    """Refuse a key under ``lssd:`` that misspells a setting; return a warning for each other
    unknown key (also logged). A misspelt key would be ignored and the setting's default or
    another pillar's value used, deploying somewhere the operator did not ask for, so it
    fails before any change; a key like no setting may be the operator's own data and is
    only warned of."""
    warnings = []
    for key, nearest in unknown_keys(configured):
        if nearest:
            raise LssdError(f"{key} is not an lssd setting: did you mean {nearest}? Nothing is done "
                            f"until it is fixed: as written it would be ignored and {nearest} taken "
                            "from elsewhere or its default")
        warnings.append(f"{key} is not an lssd setting and is ignored (the settings: pillar.example)")
    for warning in warnings:
        log.warning("lssd: %s", warning)
    return warnings


def default(name):
    """The default of ``name`` (``REQUIRED`` when there is none)."""
    return TABLE[name][0]


def check(name, value, label=None):
    """``value`` of setting ``name`` after its one check; LssdError names ``label`` (or the key)."""
    return TABLE[name][1](value, label or f"lssd:{name}")


class Settings:
    """Reads settings through ``lookup(key)`` (Salt's ``config.get``: minion config, then pillar).

    ``get(name, value)``: an explicit ``value`` (not None) wins and is checked under the
    argument's name; else the configured value, checked under ``lssd:<name>``; else the
    default. A required setting with no value raises LssdError naming the key.
    """

    def __init__(self, lookup, where=None):
        self._lookup = lookup
        self._where = f" on {where}" if where else ""  # e.g. "minion web1", for the error
        self._warnings = None

    def check_keys(self):
        """Warnings of :func:`check_keys` for what ``lssd`` holds (checked once); LssdError
        for a misspelt key."""
        if self._warnings is None:
            self._warnings = check_keys(self._lookup("lssd"))
        return self._warnings

    def get(self, name, value=None):
        if value is not None:
            return check(name, value, name.replace(":", "_") if ":" in name else name)
        configured = self._lookup(f"lssd:{name}")
        if configured is not None and configured != "":
            return check(name, configured)
        fallback = default(name)
        if fallback is REQUIRED:
            argument = name.rpartition(":")[2]
            raise LssdError(f"lssd:{name} is not set{self._where}: set it in pillar (or pass {argument}=)")
        return check(name, fallback) if fallback is not None else None
