"""What a deploy shows in the operator's terminal while it runs.

Three modes: ``live`` (stdout is a terminal and the output is for people): one line per phase,
then a block of three lines redrawn in place twice a second -- peers done / downloading /
waiting / failed, aggregate rate, seeder upload, ETA, and the slowest peers by name;
``lines`` (stdout is a file or a pipe): the phase lines and one progress line every 10 s;
``quiet`` (``--out=json`` and other machine outputters): nothing, the return data says it all.
"""

import shutil
import sys
import time

# Outputters meant for people; any other (json, yaml, raw ...) is read by a program.
# (``salt-run --quiet`` hides the return data: what is left is this display and the table.)
HUMAN_OUTPUTTERS = (None, "", "nested", "highstate", "txt")


def mode_for(opts, stream=None):
    stream = stream or sys.stdout
    if opts.get("output") not in HUMAN_OUTPUTTERS:
        return "quiet"
    return "live" if stream.isatty() else "lines"


def _rate(value):
    return f"{(value or 0) / 1e6:.1f} MB/s"


def _eta(seconds):
    if seconds is None:
        return "--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Display:
    def __init__(self, mode, stream=None, width=None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.width = width or shutil.get_terminal_size((100, 24)).columns
        self.started = time.monotonic()
        self._drawn = 0
        self._last = 0.0

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def phase(self, name, text):
        """One line for a phase of the pipeline, stamped with the seconds since the start."""
        if self.mode == "quiet":
            return
        self._clear()
        self._write(f"[{time.monotonic() - self.started:6.1f}s] {name:<9} {text}\n")

    def lines(self, lines):
        if self.mode == "quiet":
            return
        self._clear()
        self._write("".join(line + "\n" for line in lines))

    def swarm(self, view, force=False):
        """Redraw the progress block (live), or a progress line every 10 s (lines)."""
        now = time.monotonic()
        every = 0.5 if self.mode == "live" else 10.0
        # A log (lines) gets a line every 10 s, however much happens in between.
        if self.mode == "quiet" or ((not force or self.mode == "lines") and now - self._last < every):
            return
        self._last = now
        block = progress_lines(view, now - view.started)
        if self.mode == "lines":
            self._write(block[0] + "\n" + block[1] + "\n")
            return
        # A line wider than the terminal would wrap and break the redraw in place.
        block = [line[: self.width - 1] for line in block]
        self._clear()
        self._write("".join(line + "\x1b[K\n" for line in block))
        self._drawn = len(block)

    def end_swarm(self, view):
        """Leave the last state of the block on screen, as a plain line."""
        if self.mode == "quiet":
            return
        self._clear()
        block = progress_lines(view, time.monotonic() - view.started)[:2]
        self._write("".join(line[: self.width - 1] + "\n" for line in block))

    def _clear(self):
        if self._drawn:
            # Up to the first line of the block, then clear everything below.
            self._write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0


def progress_lines(view, elapsed):
    """The progress block: the peers by state; bytes, rates and ETA; the slowest peers."""
    counts = view.counts()
    total = len(view.peers)
    head = (
        f"  {elapsed:4.0f}s  peers {counts['done']}/{total} done, {counts['downloading']} downloading, "
        f"{counts['installing']} installing, {counts['waiting']} waiting, {counts['failed']} failed"
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
    )
    rates = (
        f"{_rate(view.rate())} down | seeder "
        f"{_rate(view.seeder_upload) if view.seeder_upload is not None else '--'} up | ETA {_eta(view.eta())}"
    )
    if view.size:
        done = sum(min(p.done_bytes, view.size) for p in view.peers.values())
        share = done / (view.size * max(total, 1))
        bar = "#" * int(share * 20) + "-" * (20 - int(share * 20))
        body = f"        [{bar}] {share * 100:3.0f}% {done / 1e6:.0f}/{view.size * total / 1e6:.0f} MB | {rates}"
    else:
        body = f"        no download started yet | {rates}"
    slow = view.slowest()
    tail = "        slowest: " + (", ".join(
        f"{p.name} {p.progress:.0f}% {_rate(p.rate)}" if p.status == "downloading" else f"{p.name} ({p.status})"
        for p in slow) if slow else "--")
    failed = [p for p in view.peers.values() if p.status == "failed"]
    if failed:
        tail += " | failed: " + ", ".join(p.name for p in failed[:3])
    return [head, body, tail]
