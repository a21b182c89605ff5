"""What the control-plane workflows need of Salt on one minion, as one small object.

The loader modules build a :class:`Minion` from ``__opts__``, ``__salt__`` and ``__grains__``
and pass it to the workflows (``seeder``, ``deploy``, ``tracker_role``, ``inventory``,
``mine``), which therefore run, and are tested, without a loader: a test hands them a
``Minion`` over plain functions.
"""

import glob
import logging
import os

from salt_lssd import LssdError
from salt_lssd.common import Layout
from salt_lssd.settings import Settings

log = logging.getLogger(__name__)


class Minion:
    """One minion's id, settings, state directory and the few Salt functions lssd calls.

    ``salt`` is a mapping of Salt function names to callables (``__salt__``); the ones used
    are ``config.get``, ``pillar.items``, ``mine.send``, ``mine.get``, ``mine.delete``,
    ``event.send`` and ``cp.cache_file``.
    """

    def __init__(self, opts, salt, grains=None, app=None):
        self.id = opts["id"]
        self.cachedir = opts["cachedir"]
        # Masterless (file_client: local): the mine is this minion's own cache, read by no one else.
        self.masterless = opts.get("file_client") == "local"
        self.grains = grains or {}
        self._salt = salt
        self.settings = Settings(lambda key: salt["config.get"](key), where=f"minion {self.id}")
        self._app = app
        self._opts = opts

    @property
    def app(self):
        """The app namespace (lssd:app, or the ``app`` a function was given); None: the default."""
        return self.setting("app", self._app)

    def setting(self, name, value=None):
        return self.settings.get(name, value)

    @property
    def layout(self):
        return Layout(self.setting("state_dir") or os.path.join(self.cachedir, "lssd"), self.app)

    def fire(self, tag, data):
        """Send an event to the master; progress is a courtesy, so a failure is only logged."""
        if not event_bus_up(self._opts):
            log.debug("lssd: no minion event bus here; not sending %s", tag)
            return
        try:
            self._salt["event.send"](tag, data)
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("lssd: could not send event %s: %s", tag, exc)

    def mine_get(self, tgt, alias, tgt_type="compound"):
        try:
            return self._salt["mine.get"](tgt, alias, tgt_type=tgt_type) or {}
        except Exception as exc:  # pylint: disable=broad-except
            raise LssdError(f"could not read mine alias {alias!r}: {exc}") from None

    def run_pillar(self, run_id, fresh=False):
        """What the master's run channel serves this minion for run ``run_id``:
        ``{minion: {alias: entry}}``. From the job's pillar, or with ``fresh`` from a new render
        of this minion's pillar (one request; its cost at the master does not grow with the
        fleet)."""
        from salt_lssd.channel import PILLAR_KEY  # pylint: disable=import-outside-toplevel

        if fresh:
            try:
                served = self._fresh_pillar({"lssd": {"run_id": run_id}}).get(PILLAR_KEY)
            except Exception as exc:  # pylint: disable=broad-except
                raise LssdError(f"could not ask the master for run {run_id}'s channel: {exc}") from None
        else:
            served = self._salt["config.get"](PILLAR_KEY)
        if isinstance(served, dict) and served.get("run_id") == run_id:
            return served.get("published") or {}
        return {}

    def _fresh_pillar(self, override):
        items = self._salt["pillar.items"]
        try:
            # Salt 3008 masks the values pillar.items returns unless told not to.
            return items(pillar=override, unmask=True)
        except TypeError:  # a Salt whose pillar.items neither masks nor takes unmask
            return items(pillar=override)

    def mine_send(self, alias, mine_function, **kwargs):
        return self._salt["mine.send"](alias, mine_function=mine_function, **kwargs)

    def mine_delete(self, alias):
        """Withdraw a mine entry; a master that is away only costs a warning."""
        try:
            self._salt["mine.delete"](alias)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("lssd: could not withdraw %s from the mine: %s", alias, exc)

    def refresh_grains(self):
        """Refresh grains (lssd_current, lssd_tags) after the tags here changed, so
        ``salt -G`` on the master sees them; a courtesy, so a failure is only logged."""
        refresh = self._salt.get("saltutil.refresh_grains")
        if refresh is None:
            return
        try:
            refresh()
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("lssd: could not refresh grains: %s", exc)

    def cache_file(self, url):
        cached = self._salt["cp.cache_file"](url)
        if not cached:
            raise LssdError(f"{url} could not be fetched from the master")
        return cached


def event_bus_up(opts):
    """False when no minion event bus listens here: Salt's default IPC mode, and no minion's
    pull socket in ``sock_dir`` (``salt-call --local`` without a running salt-minion). Salt
    would wait its 1 s connect timeout for every event sent there, and nothing receives it."""
    if opts.get("ipc_mode", "ipc") != "ipc" or not opts.get("sock_dir"):
        return True
    return bool(glob.glob(os.path.join(glob.escape(opts["sock_dir"]), "minion_event_*_pull.ipc")))
