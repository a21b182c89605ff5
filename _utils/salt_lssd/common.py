"""Names, paths and small file helpers every role shares.

A minion keeps everything lssd owns below one *state directory* (default
``<cachedir>/lssd``) so several minions can share a machine::

    <state_dir>/
      archives/<tag>.tar[.gz|.zst]   packed build (seeder); <tag>--<file name> with path_is_file
      downloads/<same names>         archives a peer downloaded (apart from archives/, so a
                                     minion that seeds and deploys a tag keeps both roles apart)
      torrents/<tag>.torrent         the .torrent; <tag>.json beside it keeps sha256 and size,
                                     <tag>.ssl/ the deploy's certificate and key (seeder)
      run/<role>[-<tag>]/            one directory per detached process:
                                     pid, config.json, state.json, log
      tracker/allowed/<infohash>     info-hashes the tracker serves (tracker_allow)
      installed/<tag>.json           what the peer installed and where (for idempotent states);
                                     <tag>.lssd-manifest.json beside it for a tree-mode install
      locks/peer-<tag>.lock          held while a job deploys the tag (one at a time)
      apps/<app>/                    the same archives/ ... locks/ (not tracker/) for each
                                     lssd:app, so two apps may deploy one tag side by side

Without lssd:app everything sits at the top, as it always has, so existing installs keep
working. The tracker is one per minion whatever the app: it stays at the top (run/tracker,
tracker/allowed) and serves every app's info-hashes.
"""

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile

from salt_lssd import LssdError

# A tag names a build; it becomes a directory and file name, so it must not be a path.
_TAG_MAX = 128


def validate_tag(tag, what="tag"):
    """Return ``tag`` as a str if it is a safe name, else raise LssdError naming what is wrong.

    An int is taken as its digits: YAML reads ``tag: 20261125`` as a number. ``what`` names
    the value in errors (``app`` for an app namespace, which follows the same rules).
    """
    if isinstance(tag, int) and not isinstance(tag, bool):
        tag = str(tag)
    if not isinstance(tag, str):
        raise LssdError(f"{what} {tag!r} must be a string, not {type(tag).__name__}")
    if not tag:
        raise LssdError(f"{what} '' is empty; a {what} is a name such as 'Deploy1'")
    if len(tag) > _TAG_MAX:
        raise LssdError(f"{what} {tag!r} is {len(tag)} characters long; at most {_TAG_MAX} are allowed")
    if "/" in tag or "\\" in tag:
        raise LssdError(f"{what} {tag!r} may not contain '/' or '\\'")
    if tag == "all" and what == "tag":  # states take "all" for every tag
        raise LssdError("tag 'all' is reserved (lssd.seeding_stopped all stops every tag); choose another name")
    if tag in (".", "..") or ".." in tag:
        raise LssdError(f"{what} {tag!r} may not contain '..'")
    if tag.startswith(".") or tag.startswith("-"):
        raise LssdError(f"{what} {tag!r} may not start with '.' or '-'")
    bad = [c for c in tag if c.isspace() or not c.isprintable()]
    if bad:  # named apart from the character list below: the commonest mistake
        raise LssdError(
            f"{what} {tag!r} may not contain whitespace or control characters (found {bad[0]!r})"
        )
    if not re.fullmatch(r"[A-Za-z0-9._+@=:,~-]+", tag):
        raise LssdError(
            f"{what} {tag!r} may only contain letters, digits and . _ + @ = : , ~ -"
        )
    return tag


def validate_app(app):
    """Return ``app`` as a str if it names an app namespace (lssd:app), else raise LssdError.

    The rules of a tag, and no ',': Salt's mine.get reads a ',' in the function name as a
    list, so an alias holding one could not be read back."""
    app = validate_tag(app, "app")
    if "," in app:
        raise LssdError(f"app {app!r} may not contain ','; allowed: letters, digits and . _ + @ = : ~ -")
    return app


def ensure_dir(path, mode=0o700):
    """Make ``path`` (and missing parents) with ``mode`` whatever the umask; return it.

    lssd keeps pidfiles, archives and state below these directories and acts on them as the
    user running it (often root): one another user owns, or may write into, would let that
    user plant a pidfile or swap an archive. Such a directory is refused with LssdError, and
    so is any directory above it that a user other than root or ours could rename or replace.
    """
    given, path = path, os.path.abspath(path)
    missing = []
    head = path
    while not os.path.isdir(head):
        missing.append(head)
        head = os.path.dirname(head)
    for each in reversed(missing):
        try:
            os.mkdir(each, mode)
        except FileExistsError:
            continue  # made meanwhile by another job; checked below like any existing one
        except OSError as exc:
            raise LssdError(f"cannot create directory {each!r}: {exc.strerror}") from exc
        # mkdir's mode is masked by the umask (0777 under umask 000 is what went wrong).
        os.chmod(each, mode)
    _check_private_dir(path, os.geteuid())
    child, parent = path, os.path.dirname(path)
    while parent != child:
        _check_private_dir(parent, os.geteuid(), 0)
        child, parent = parent, os.path.dirname(parent)
    return given


def _check_private_dir(path, *owners):
    """LssdError unless ``path`` is a directory owned by one of ``owners`` that no one else
    may write into (sticky world-writable directories such as /tmp excepted)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise LssdError(f"{path!r} is not a directory")
    if st.st_uid not in owners:
        raise LssdError(
            f"directory {path!r} is owned by uid {st.st_uid}, not by the user running lssd "
            f"(uid {os.geteuid()}); lssd only uses directories its own user owns"
        )
    # A sticky world-writable directory (/tmp) lets others add names but not replace ours.
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise LssdError(
            f"directory {path!r} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"allowed: writable by its owner only (chmod go-w {path})"
        )


class Layout:
    """Where a minion's lssd files live (see the module docstring).

    ``root`` is the state directory; ``home`` holds this app's files: ``root`` itself without
    an app, ``root/apps/<app>`` with one. Only the tracker's files are always below ``root``.
    """

    def __init__(self, state_dir, app=None):
        self.root = os.path.abspath(state_dir)
        self.app = None if app in (None, "") else validate_app(app)
        self.home = self.root if self.app is None else os.path.join(self.root, "apps", self.app)

    def apps(self):
        """The app namespaces that hold anything here, sorted (the default one not included)."""
        where = os.path.join(self.root, "apps")
        if not os.path.isdir(where):
            return []
        return sorted(n for n in os.listdir(where) if os.path.isdir(os.path.join(where, n)))

    def _sub(self, *parts):
        return os.path.join(self.home, *parts)

    @property
    def archives(self):
        return self._sub("archives")

    @property
    def downloads(self):
        return self._sub("downloads")

    @property
    def torrents(self):
        return self._sub("torrents")

    @property
    def run(self):
        return self._sub("run")

    @property
    def allowed(self):
        return os.path.join(self.root, "tracker", "allowed")

    @property
    def installed(self):
        return self._sub("installed")

    @property
    def locks(self):
        return self._sub("locks")

    def torrent(self, tag):
        return os.path.join(self.torrents, validate_tag(tag) + ".torrent")

    def credentials(self, tag):
        return os.path.join(self.torrents, validate_tag(tag) + ".ssl")

    def torrent_meta(self, tag):
        return os.path.join(self.torrents, validate_tag(tag) + ".json")

    def run_dir(self, role, tag=None):
        if role == "tracker":  # one tracker per minion, shared by every app
            return os.path.join(self.root, "run", "tracker")
        name = role if tag is None else f"{role}-{validate_tag(tag)}"
        return os.path.join(self.run, name)

    def run_dirs(self, role=None, tag=None):
        """``{(role, tag): run_dir}`` of the processes started here, filtered by ``role`` and
        ``tag``; the tracker's tag is None. The one place that parses run directory names."""
        if role is not None and tag is not None:
            return {(role, validate_tag(tag)): self.run_dir(role, tag)}
        found = {}
        names = sorted(os.listdir(self.run)) if os.path.isdir(self.run) else []
        for name in names:
            each_role, _, each_tag = name.partition("-")
            # An app's run/ holds no tracker: the minion's one tracker lives below root.
            if role in (None, each_role) and tag in (None, each_tag) and not (self.app and each_role == "tracker"):
                found[(each_role, each_tag or None)] = os.path.join(self.run, name)
        if self.app and role in (None, "tracker") and tag is None and os.path.isdir(self.run_dir("tracker")):
            found[("tracker", None)] = self.run_dir("tracker")
        return found

    def aborted(self, run_id):
        """A marker the orchestrate leaves when run ``run_id`` failed before its torrent was
        published: the run's roles waiting for that torrent stop waiting."""
        return os.path.join(self.root, "aborted", validate_tag(run_id))

    def installed_record(self, tag):
        return os.path.join(self.installed, validate_tag(tag) + ".json")

    def installed_manifest(self, tag):
        """A tree-mode install's manifest, kept for delta deploys and for its lingering seeder."""
        return os.path.join(self.installed, validate_tag(tag) + ".lssd-manifest.json")

    def lock(self, tag):
        return os.path.join(self.locks, f"peer-{validate_tag(tag)}.lock")


@contextlib.contextmanager
def atomic_output(path, mode=0o600, prefix=".tmp-"):
    """A binary file to write that becomes ``path`` only when the block ends without error:
    a temporary file beside it, flushed to disk, renamed over ``path`` and the rename made
    durable; on error the temporary file is removed and ``path`` is untouched. A reader sees
    the old file or the new one, never half of one."""
    directory = os.path.dirname(path)
    ensure_dir(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(path):
    """Make a rename into ``path`` durable (the entry, not just the data, survives a power cut)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, mode=0o600):
    """Write ``data`` (bytes or str) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, mode) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def write_json_atomic(path, data):
    write_atomic(path, json.dumps(data, sort_keys=True))


def read_json(path, default=None):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except ValueError:
        return default


def sha256_file(path, bufsize=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(bufsize)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()
