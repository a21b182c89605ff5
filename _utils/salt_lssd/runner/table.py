"""The per-minion table of a deploy, from the peer step's returns (or a job cache entry).

One row per peer: result, bytes, download seconds, MB/s, bytes from the seeder and from other
peers, verify+install seconds, and the reason of a failure. ``rows`` reads the ``lssd.deployed``
state's return (or the ``complete`` event's summary when that is all there is); ``render``
lays the rows out as text.
"""

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


def from_return(minion, ok, reason, ret, summary=None):
    """The row of a peer whose step job returned ``ret``; ``summary``: its complete event."""
    state = deployed_state(ret)
    deployed = ((state or {}).get("changes") or {}).get("deployed") or {}
    merged = dict(summary or {}, **{k: v for k, v in deployed.items() if v is not None})
    return row(minion, ok, reason, merged, state)


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


def render(rows):
    """``{minion: row}`` as text lines: a header, a rule and one line per minion."""
    cells = [_cells(minion, rows[minion]) for minion in sorted(rows)]
    widths = [max(len(str(c[i])) for c in cells + [HEADERS]) for i in range(len(HEADERS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths[:-1]).rstrip())
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    return lines
