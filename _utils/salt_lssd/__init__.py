"""salt-lssd: large-scale server deploys over BitTorrent, driven by Salt.

This package is the data plane (tracker, packing, swarm clients, installing). It imports
nothing from Salt, so the detached processes it runs start fast and work the same whether the
package was ``pip install``-ed or synced by ``saltutil.sync_all`` into the minion's extmods.
"""

__version__ = "0.1.0"


class LssdError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


class NotPublished(LssdError):
    """No seeder publishes the tag (in the mine): a state may accept what is installed."""
