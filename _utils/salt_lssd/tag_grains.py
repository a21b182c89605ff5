"""What a minion holds, as grains: the tags lssd installed and the tags ``current`` points to.

Grains modules get the minion's options but neither ``__salt__`` nor pillar, so the state
directory is ``lssd:state_dir`` of the minion config, else ``<cachedir>/lssd`` -- where the
install records (``installed/<tag>.json``) are. A deploy with ``lssd:state_dir`` set only in
pillar is not seen here. Each lssd:app namespace keeps its own records; its tags show under
``lssd_apps: {<app>: {tags, current}}``, the default namespace's in the grains above.
"""

import os
import types

from salt_lssd import inventory, releases
from salt_lssd.common import Layout


def state_dir(opts):
    configured = (opts.get("lssd") or {}).get("state_dir") if isinstance(opts.get("lssd"), dict) else None
    return configured or os.path.join(opts.get("cachedir") or "", "lssd")


def grains(opts):
    """``lssd_tags`` (sorted), ``lssd_current`` (the tag a symlink beside the installed tags
    points to; a list when several destinations point to different tags) and ``lssd_links``
    (each such symlink's path and the tag it points to) of the default namespace; and
    ``lssd_apps``: the same ``tags``, ``current`` and ``links`` per app namespace."""
    root = state_dir(opts)
    found = _namespace(Layout(root))
    apps = {}
    for app in Layout(root).apps():
        each = _namespace(Layout(root, app))
        if each:
            apps[app] = {k[len("lssd_"):]: v for k, v in each.items()}
    if apps:
        found["lssd_apps"] = apps
    return found


def _namespace(layout):
    """The grains of one namespace's install records (none when it holds no tag)."""
    records = inventory.installed(types.SimpleNamespace(layout=layout))
    if not records:
        return {}
    links = {}
    for tag, record in records.items():
        destination = os.path.dirname(os.path.normpath(record["target"]))
        for name in releases.links_to(destination, tag):
            links[os.path.join(destination, name)] = tag
    found = {"lssd_tags": sorted(records)}
    current = sorted(set(links.values()))
    if current:
        found["lssd_current"] = current[0] if len(current) == 1 else current
        found["lssd_links"] = links
    return found
