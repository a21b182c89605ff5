"""
Grains ``lssd_current``, ``lssd_tags`` and ``lssd_links``: target minions by the tag they hold.

.. code-block:: bash

    salt -G 'lssd_current:Deploy7' test.ping
    salt -G 'lssd_tags:Deploy6' lssd.status

``lssd_tags`` lists the tags lssd installed on the minion (and that are still in place);
``lssd_current`` is the tag the ``current`` symlink (``lssd:current``) points to (a list when
several destinations on the minion point to different tags); ``lssd_links`` maps each such
symlink's path to its tag. They are read
from the install records below ``lssd:state_dir`` of the minion config, else
``<cachedir>/lssd``; a deploy refreshes them when it completes.
"""

import logging
import os
import sys

try:
    from salt_lssd import tag_grains
except ImportError:
    # Classic install: the package arrives in extmods/utils beside extmods/grains.
    _parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _candidate in (os.path.join(_parent, "utils"), os.path.join(_parent, "_utils")):
        if os.path.isdir(os.path.join(_candidate, "salt_lssd")) and _candidate not in sys.path:
            sys.path.append(_candidate)
    try:
        from salt_lssd import tag_grains
    except ImportError:
        tag_grains = None

log = logging.getLogger(__name__)


def lssd():
    """The lssd grains of this minion (none where lssd installed nothing)."""
    if tag_grains is None:
        return {}
    try:
        return tag_grains.grains(__opts__)
    except Exception as exc:  # pylint: disable=broad-except
        # A grain must never stop the minion from starting; say why it is missing.
        log.warning("lssd grains: could not read the install records: %s", exc)
        return {}
