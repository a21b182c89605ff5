"""The per-minion table of a deploy, from the peer step's returns (or a job cache entry).

One row per peer: result (``ok``, ``unchanged``, ``failed`` or ``skipped``), bytes, download
seconds, MB/s, bytes from the seeder and from other peers, verify+install seconds, and the
reason of a failure. ``from_return`` reads the ``lssd.deployed`` state's return as the job cache
holds it (never an event: a minion can fire those under any id); ``render`` lays the rows out as
text no wider than the terminal.
"""

import textwrap

HEADERS = ("minion", "result", "bytes", "seconds", "MB/s", "from seeder", "from peers", "install s", "")


def deployed_state(ret):
    """The ``lssd.deployed`` state result inside one minion's state return, or None."""
    value = ret.get("return") if isinstance(ret, dict) and "return" in ret else ret
    if not isinstance(value, dict):
        return None
    for key, state in value.items():
        if key.startswith("lssd_|-") and "_|-deployed" in key and isinstance(state, dict):
            return state
    return None


def row(minion, ok, reason=None, deployed=None, state=None):
    """One minion's row as a dict (the runner's return data carries these)."""
    deployed = dict(deployed or {})
    entry = {"result": "ok" if ok else "failed"}
    if ok and not deployed.get("bytes") and state is not None:
        entry["result"] = "unchanged" if not state.get("changes") else "ok"
    for key in ("bytes", "seconds", "rate", "from_seeder", "from_peers", "install_seconds", "target"):
        if deployed.get(key) is not None:
            entry[key] = deployed[key]
    if state is not None and state.get("comment"):
        entry["comment"] = str(state["comment"]).splitlines()[0]
    if not ok:
        entry["reason"] = reason or entry.get("comment") or "failed"
    return entry


def skipped(minion, reason):
    """The row of a peer the run chose not to deploy (a canary failed): neither ok nor failed."""
    return {"result": "skipped", "reason": reason}


def from_return(minion, ok, reason, ret):
    """The row of a peer whose step job returned ``ret`` (its job cache entry)."""
    state = deployed_state(ret)
    deployed = ((state or {}).get("changes") or {}).get("deployed") or {}
    return row(minion, ok, reason, deployed, state)


def _mb(value):
    return f"{value / 1e6:.1f} MB" if value is not None else ""


def _cells(minion, entry):
    seconds = entry.get("seconds")
    size = entry.get("bytes")
    rate = size / seconds / 1e6 if size and seconds else None
    return (
        minion, entry["result"], _mb(size), f"{seconds:.2f}" if seconds is not None else "",
        f"{rate:.1f}" if rate is not None else "", _mb(entry.get("from_seeder")), _mb(entry.get("from_peers")),
        f"{entry['install_seconds']:.2f}" if entry.get("install_seconds") is not None else "",
        entry.get("reason", ""),
    )


# A reason gets at least this many columns beside the cells, else it goes below them; and at
# most this many lines, the rest trimmed (the return data keeps every reason whole).
REASON_MIN = 30
REASON_LINES = 3


def render(rows, width=None):
    """``{minion: row}`` as text lines: a header, a rule and one line per minion, whose reason
    wraps (then is trimmed) so that no line is wider than ``width``."""
    cells = [_cells(minion, rows[minion]) for minion in sorted(rows)]
    widths = [max(len(str(c[i])) for c in cells + [HEADERS]) for i in range(len(HEADERS) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths).rstrip())
    indent = sum(widths) + 2 * len(widths)
    for cell in cells:
        head = "  ".join(str(c).ljust(w) for c, w in zip(cell, widths))
        reason = str(cell[-1])
        if not width or indent + len(reason) <= width:
            lines.append(f"{head}  {reason}".rstrip())
            continue
        wrap_at = indent if width - indent >= REASON_MIN else 4
        wrapped = _wrap(reason, max(width - wrap_at, 20))
        if wrap_at == indent:
            lines.append(f"{head}  {wrapped[0]}")
            lines += [" " * indent + more for more in wrapped[1:]]
        else:
            lines.append(head.rstrip())
            lines += [" " * wrap_at + more for more in wrapped]
    return lines


def _wrap(text, width):
    """``text`` in lines of ``width`` at most, no more than REASON_LINES, the last ending in
    ``...`` when some was left out."""
    wrapped = textwrap.wrap(" ".join(text.split()), width, break_long_words=True) or [""]
    if len(wrapped) <= REASON_LINES:
        return wrapped
    last = wrapped[REASON_LINES - 1]
    return wrapped[: REASON_LINES - 1] + [last[: width - 3].rstrip() + "..."]
