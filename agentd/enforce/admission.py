"""Admission control: pure decisions on whether a tool call may start now.

The idea is the one LLM-serving schedulers use for requests ("past and future" memory):
what a running call holds *and* the growth its forecast still expects count; nothing else.
A call that has already been at its forecast peak reserves no more than it holds (the part
of a forecast still to come is the forecast above the most the call has held so far), so
a test suite past its spike does not keep memory that is free from others. A new call
starts when its own forecast peak fits in the memory really free (`available`: the room
under agentd's limit less what is in use, reclaimable page cache counted as free, see
hostmem.py, and idle agents' memory that can still go to swap, see agentd/reclaim/) beside that growth still to come, and in the policy's budget beside what the
running calls hold and will take; otherwise it waits at its start, where waiting costs
only time, rather than colliding in the middle of its growth. While memory is already
under pressure (PSI, or the memory watch's projection) a call that has others to wait for
waits. Waiting calls are admitted highest priority first (FIFO among equals) as room
appears. A call never waits when nothing else runs: then waiting could not make room,
only delay.

The agent's priority also decides whose memory counts. A call never waits for calls of
lower-priority agents: their reservations do not count against it, and what they hold
counts as room, because the pressure ladder and the kernel OOM order take it back from
them first. A high-priority agent's test suite starts at once; the best-effort agents
around it yield if memory really runs out. Within one priority of agents the budget holds
for everyone, and waiters go by class.

Calls forecast at the floor (`floor`: the forecaster's, below which a peak is noise: a
`git status`, a short script) are left out of the reckoning of forecasts. Such a call
starts wherever the memory really free covers it, whatever the running calls' forecasts
still expect: it lasts moments, and if a growing call does collide with it the ladder and
the kernel OOM order take memory back from the lowest-ranked call, never from an agent.
Running at-the-floor calls reserve nothing beyond what they hold (that is already out of
`available`) and never make a bigger call wait: waiting for them makes no room worth the
delay, and holding a test suite until no `git` runs anywhere serialises every agent behind
one forecast. Only calls above the floor reserve their growth and wait for each other.
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
    rank: tuple | None = None     # (agent priority, call priority); None: always counts
    seen: int = 0                 # the most it has held so far

    @property
    def to_come(self):
        """Growth its forecast still expects: the forecast above the most it has held
        (a call that has been at its forecast peak is not reserved for it again)."""
        return max(0, self.forecast_peak - max(self.current, self.seen))

    @property
    def reserved(self):
        """What it holds and what its forecast still expects."""
        return self.current + self.to_come


def demand(running):
    """Bytes the running calls hold or are still forecast to take."""
    return sum(r.reserved for r in running)


def _yields(r, rank):
    return r.rank is not None and r.rank[0] < rank[0]


def small(r, floor):
    """Is running call `r` an at-the-floor one (forecast, what it holds and has held all at
    most `floor`)? None: no floor, every call counts."""
    return floor is not None and max(r.forecast_peak, r.current, r.seen) <= floor


def fits(peak, running, budget, available=None, rank=None, floor=None):
    """May a call forecast to peak at `peak` bytes start next to `running`?

    `budget`: the policy's memory budget for tool calls (bytes; None = unlimited).
    `available`: memory really free (agentd's room, or MemAvailable); the growth the
    running calls are still forecast to make is set against it too.
    `rank`: the call's (agent priority, call priority); running calls of lower-priority
    agents are left out and what they hold counts as available (see the module's docstring).
    `floor`: the forecaster's floor; a call forecast at most this starts where `available`
    covers it, and running calls within it never make a call wait (the module's docstring).
    """
    if floor is not None and peak <= floor:
        return available is None or peak <= available
    running = [r for r in running if not small(r, floor)]
    if rank is not None:
        yielding = [r for r in running if _yields(r, rank)]
        running = [r for r in running if not _yields(r, rank)]
        if available is not None:
            available += sum(r.current for r in yielding)
    if not running:
        return True
    if budget is not None and demand(running) + peak > budget:
        return False
    if available is not None and sum(r.to_come for r in running) + peak > available:
        return False
    return True


def fits_resumed(call, running, budget, available=None, floor=None):
    """May a paused call (frozen, or throttled below its forecast) go on growing next to
    `running`? What it holds is already taken; its forecast growth must fit as a new
    call's peak would, ranked as the call is."""
    return fits(call.to_come, running, None if budget is None else budget - call.current, available,
                rank=call.rank, floor=floor)


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

    @property
    def rank(self):
        return (self.agent_priority, self.priority)


def pick(waiters, running, budget, available=None, floor=None):
    """Which waiters may start now, in order: strictly by priority, the agent's then the
    call's (then arrival).

    Admitted calls count against the budget of those after them (an at-the-floor one takes
    its peak out of what is available). The first waiter that does not fit stops the scan,
    so a stream of small low-priority calls cannot starve a big high-priority one.
    """
    out = []
    running = list(running)
    for w in sorted(waiters):
        if not fits(w.peak, running, budget, available, rank=w.rank, floor=floor):
            break
        out.append(w)
        if floor is not None and w.peak <= floor:
            available = None if available is None else available - w.peak
        else:
            running.append(Running(w.key, w.peak, 0, w.rank))   # its growth now counts for the next
    return out
