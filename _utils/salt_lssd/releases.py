"""Releases: the ``current`` symlink and the pruning of old tags in a destination directory.

A destination directory holds one installed tree per tag (``destination_path/<tag>``) and, if
asked for, a symlink beside them (``current`` by default) naming the tag in use, so that an
application runs from ``destination_path/current`` and moves to a new tag in one ``rename(2)``:
a temporary symlink is made beside the old one and renamed over it, so the link always names
either the old tag or the new one. Only a symlink is ever replaced; a file or directory of that
name is refused.

Pruning keeps the N most recently installed tags (by the install records the ``lssd`` execution
module passes in) and removes older ones. It considers only tags lssd installed into that
directory, never anything else there, and never a tag that a symlink in the directory points
to. Removing a tree never follows a symlink out of it.

Nothing here knows about Salt; the execution module does the archive and record bookkeeping.
"""

import os
import secrets

from salt_lssd import LssdError
from salt_lssd.install import _remove_tree

DEFAULT_LINK = "current"


def check_link_name(link, tag=None):
    """Return ``link`` if it can name a symlink beside the tag directories, else LssdError."""
    if not isinstance(link, str) or link in ("", ".", "..") or "/" in link or "\0" in link:
        raise LssdError(
            f"current {link!r} must be a plain file name (not empty, '.' or '..', no '/'); "
            "it names a symlink in destination_path"
        )
    if len(os.fsencode(link)) > 255:
        raise LssdError(f"current {link!r} is longer than 255 bytes")
    if tag is not None and link == tag:
        raise LssdError(f"current {link!r} is the name of the tag's own directory; choose another name")
    return link


def check_keep(keep):
    """Return ``keep`` as an int >= 1, else LssdError."""
    if isinstance(keep, bool) or not isinstance(keep, (int, str)) or not str(keep).strip().isdigit():
        raise LssdError(f"keep {keep!r} is not a whole number; give how many tags to keep (1 or more)")
    value = int(str(keep).strip())
    if value < 1:
        raise LssdError(f"keep {keep!r} is below 1; the tag just deployed is always kept")
    return value


def read_link(destination_path, link):
    """What the symlink ``destination_path/<link>`` points to (as written), or None if absent.

    LssdError if something other than a symlink has that name: lssd replaces only symlinks.
    """
    path = os.path.join(destination_path, link)
    if not os.path.lexists(path):
        return None
    if not os.path.islink(path):
        kind = "a directory" if os.path.isdir(path) else "a file"
        raise LssdError(
            f"{path!r} is {kind}, not a symlink; lssd only replaces a symlink there: "
            "move it away or choose another name for current"
        )
    return os.readlink(path)


def links_to(destination_path, name, ignore=()):
    """Names of the symlinks directly in ``destination_path`` that resolve to ``<name>`` there
    (but for those named in ``ignore``)."""
    target = os.path.realpath(os.path.join(destination_path, name))
    found = []
    try:
        entries = list(os.scandir(destination_path))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name in ignore or entry.name == name:
            continue
        if entry.is_symlink() and os.path.realpath(entry.path) == target:
            found.append(entry.name)
    return sorted(found)


def switch(destination_path, tag, link=DEFAULT_LINK, dry_run=False):
    """Point ``destination_path/<link>`` at ``<tag>`` (relative), replacing the old link atomically.

    Returns ``changed``, ``link`` (the symlink's path), ``old`` (what it pointed to, None if it
    did not exist) and ``new`` (the tag). With ``dry_run`` nothing is touched and the tag
    directory need not exist yet.
    """
    check_link_name(link, tag)
    path = os.path.join(destination_path, link)
    old = read_link(destination_path, link)
    result = {"changed": old != tag, "link": path, "old": old, "new": tag}
    if old == tag or dry_run:
        return result
    tag_dir = os.path.join(destination_path, tag)
    if os.path.islink(tag_dir) or not os.path.isdir(tag_dir):
        raise LssdError(f"{tag_dir!r} is not a directory; deploy {tag} before pointing {link} at it")
    tmp = os.path.join(destination_path, f".{link}.lssd-tmp-{secrets.token_hex(6)}")
    try:
        os.symlink(tag, tmp)
        try:
            # Checked again: a file put there since read_link would be replaced silently.
            read_link(destination_path, link)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise LssdError(f"cannot point {path!r} to {tag}: {exc}") from exc
    return result


def prune_plan(records, destination_path, keep, newest=None, link=None):
    """Which tags to remove from ``destination_path`` to keep the ``keep`` most recent ones.

    records
        ``{tag: record}`` of installed tags; a record's ``target`` says where it was installed
        and ``installed`` when. Only records whose target is ``destination_path/<tag>`` count.
    newest
        A tag counted as the most recent whatever its record says (the one just deployed, or
        about to be in a dry run); always kept.
    link
        The name of a symlink that points to ``newest`` (or is about to, in a dry run): it does
        not keep the tag it points to now.

    Returns ``keep`` (tags kept, newest first), ``protected`` (older tags a symlink in the
    directory points to, kept) and ``remove`` (tags to remove, newest first), each tag with
    the path of its directory in ``targets``.
    """
    keep = check_keep(keep)
    destination = os.path.normpath(destination_path)
    here = {
        tag: record
        for tag, record in (records or {}).items()
        if isinstance(record, dict)
        and os.path.normpath(str(record.get("target", ""))) == os.path.join(destination, tag)
    }
    order = sorted(
        (t for t in here if t != newest), key=lambda t: here[t].get("installed") or 0, reverse=True
    )
    if newest is not None:
        order.insert(0, newest)
    older = order[keep:]
    ignore = (link,) if link and newest is not None else ()
    protected = [t for t in older if links_to(destination, t, ignore=ignore)]
    remove = [t for t in older if t not in protected]
    return {
        "keep": order[:keep],
        "protected": protected,
        "remove": remove,
        "targets": {t: os.path.join(destination, t) for t in order},
    }


def remove(target, force=False, dry_run=False):
    """Delete the installed tree ``target``, never following a symlink out of it.

    Symlinks beside it (in its parent directory) that point to it are refused unless ``force``,
    which removes them first, so nothing is served from a half-deleted tree. Returns the paths
    of those symlinks. With ``dry_run`` only the refusal is checked; nothing is touched.
    """
    parent, name = os.path.split(os.path.normpath(target))
    links = [os.path.join(parent, link) for link in links_to(parent, name)]
    if links and not force:
        raise LssdError(
            f"{links[0]!r} points to {target!r}; set force: True to remove the tree and the symlink"
        )
    if dry_run:
        return links
    try:
        for path in links:
            os.unlink(path)
        _remove_tree(target)
    except OSError as exc:
        raise LssdError(f"cannot remove {target!r}: {exc}") from exc
    return links
