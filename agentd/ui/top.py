"""`agentd top`: the status table, refreshed in place, with tool-call rates between refreshes.

Plain ANSI (clear + home) rather than curses: works over any terminal and in a pipe,
and `--once` prints a single frame for scripts and tests.
"""

import os
import shutil
import sys
import time

from .table import status_lines

CLEAR = "\x1b[H\x1b[2J"


def frame(snap, prev=None, dt=None, width=160):
    """Lines of one frame; `prev`/`dt` (the previous snapshot and seconds since) give rates."""
    lines = status_lines(snap, width)
    if prev is not None and dt:
        started = (snap.get("tool_calls") or {}).get("started", 0) - (prev.get("tool_calls") or {}).get("started", 0)
        lines.insert(2, f"rate: {max(started, 0) / dt:.1f} tool calls/s over the last {dt:.1f}s")
    return lines


def run_top(call, interval=1.0, once=False, out=None, iterations=None):
    """`call()` returns a status snapshot (raises OSError-like errors when the daemon is gone)."""
    out = out or sys.stdout
    tty = out.isatty() and not once
    prev = prev_t = None
    n = 0
    while True:
        width = shutil.get_terminal_size((160, 40)).columns
        now = time.monotonic()
        try:
            snap = call()
            lines = frame(snap, prev, (now - prev_t) if prev_t else None, width)
            prev, prev_t = snap, now
        except Exception as err:         # the daemon restarting is normal: keep trying
            if once:
                raise
            lines = [f"agentd daemon unavailable ({err}); retrying every {interval:.0f}s"]
        text = "\n".join(lines) + "\n"
        out.write((CLEAR + text) if tty else text)
        out.flush()
        n += 1
        if once or (iterations is not None and n >= iterations):
            return 0
        if not tty:
            out.write("\n")
        time.sleep(interval)
