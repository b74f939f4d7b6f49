"""Admission control: pure decisions on whether a tool call may start now.

The idea is the one LLM-serving schedulers use for requests ("past and future" memory):
a running call will still grow to its forecast peak, so what it holds *and* what it will
take count against the budget. A new call starts when its own forecast peak fits next to
the forecast peaks of the calls already running; otherwise it waits, and waiting calls
are admitted highest priority first (FIFO among equals) as room appears. A call never
waits when nothing else runs: then waiting could not make room, only delay.
"""

import itertools
from dataclasses import dataclass, field

_seq = itertools.count()


@dataclass(frozen=True)
class Running:
    """A running tool call as admission sees it."""
    key: str
    forecast_peak: int            # bytes it is expected to reach (live re-forecast)
    current: int = 0              # bytes it holds now

    @property
    def reserved(self):
        # It may already be past its forecast: then what it holds is the reservation.
        return max(self.forecast_peak, self.current)


def demand(running):
    """Bytes the running calls hold or are forecast to reach."""
    return sum(r.reserved for r in running)


def fits(peak, running, budget, available=None):
    """May a call forecast to peak at `peak` bytes start next to `running`?

    `budget`: the policy's memory budget for tool calls (bytes; None = unlimited).
    `available`: memory the host can still give (MemAvailable); the growth the running
    calls are still forecast to make is set against it too.
    """
    if not running:
        return True
    if budget is not None and demand(running) + peak > budget:
        return False
    if available is not None:
        growth = sum(max(0, r.reserved - r.current) for r in running)
        if growth + peak > available:
            return False
    return True


@dataclass(order=True)
class Waiter:
    sort_key: tuple = field(init=False, repr=False)
    priority: int
    peak: int
    key: str = field(compare=False)
    seq: int = field(default_factory=lambda: next(_seq), compare=False)
    agent_priority: int = field(default=0, compare=False)

    def __post_init__(self):
        # The agent's priority first, then the call's (the ladder's order).
        self.sort_key = (-self.agent_priority, -self.priority, self.seq)


def pick(waiters, running, budget, available=None):
    """Which waiters may start now, in order: strictly by priority, the agent's then the
    call's (then arrival).

    Admitted calls count against the budget of those after them. The first waiter that
    does not fit stops the scan, so a stream of small low-priority calls cannot starve a
    big high-priority one.
    """
    out = []
    running = list(running)
    for w in sorted(waiters):
        if not fits(w.peak, running, budget, available):
            break
        out.append(w)
        running.append(Running(w.key, w.peak, 0))   # its growth now counts for the next
    return out
