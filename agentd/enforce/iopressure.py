"""I/O pressure as a ladder reason: a lower-priority call's disk traffic that stalls a
higher-priority agent (pure: readings and time passed in).

An agent's io.pressure `some` counter says how long some of its tasks waited for I/O;
io.stat says how many bytes and operations a call moved. When a higher-priority agent
waited longer than `io.ladder_stall_us` within the last pressure window while a
lower-priority call moved data, that call is named: the ladder acts on its agent (the
lowest-priority of those calls first) with a reason that says who was hurt and by what.
A call that moves next to nothing is never named: the stall is then the disk's, not its.
"""

from collections import deque
from dataclasses import dataclass

from ..units import format_size

# Below these a call is no one's noisy neighbour on a disk.
MIN_BYTES_PER_S = 1 << 20
MIN_IOS_PER_S = 50


class Window:
    """Per key, how much a growing counter grew over the last `span_s` seconds."""

    def __init__(self, span_s):
        self.span_s = span_s
        self.samples = {}         # key -> deque of (t, value)

    def add(self, key, t, value):
        """Record `value` at `t`; returns (growth, seconds) over the samples within the
        span (the oldest one kept is at most span_s old), or None with a single sample."""
        q = self.samples.setdefault(key, deque())
        if q and value < q[-1][1]:
            q.clear()             # a counter that went back: a new cgroup under the key
        q.append((t, value))
        while len(q) > 2 and t - q[1][0] >= self.span_s:
            q.popleft()
        if len(q) < 2 or q[-1][0] <= q[0][0]:
            return None
        return q[-1][1] - q[0][1], q[-1][0] - q[0][0]

    def keep(self, keys):
        for k in [k for k in self.samples if k not in keys]:
            del self.samples[k]


@dataclass(frozen=True)
class AgentStall:
    agent: str
    priority: int
    stall_us: int                 # io.pressure `some` growth over the window
    window_s: float


@dataclass(frozen=True)
class CallIo:
    key: str                      # "<agent>/<tool>"
    agent: str
    agent_priority: int
    priority: int
    bytes_per_s: float
    ios_per_s: float


@dataclass(frozen=True)
class Blame:
    victim: str                   # the agent that stalled
    culprit: str                  # the call's key
    culprit_agent: str
    reason: str


def is_busy(c):
    """Does call `c` (a CallIo) move enough to stall anyone?"""
    return c.bytes_per_s >= MIN_BYTES_PER_S or c.ios_per_s >= MIN_IOS_PER_S


def blame(stalls, calls, threshold_us):
    """The call to answer for the worst-hurt higher-priority agent's I/O stall, or None.

    The victim: the highest-priority agent whose stall passed `threshold_us` (the one
    whose latency matters most). The culprit: among calls of lower-priority agents that
    move data, the lowest-priority agent's, then the lowest-priority call, then the one
    moving the most bytes, as the ladder orders its candidates."""
    hurt = sorted((s for s in stalls if s.stall_us >= threshold_us), key=lambda s: (-s.priority, s.agent))
    for victim in hurt:
        busy = [c for c in calls if c.agent_priority < victim.priority and c.agent != victim.agent and is_busy(c)]
        if not busy:
            continue
        c = min(busy, key=lambda c: (c.agent_priority, c.priority, -c.bytes_per_s, -c.ios_per_s, c.key))
        reason = (f"I/O pressure: agent {victim.agent} (priority {victim.priority}) waited "
                  f"{victim.stall_us / 1000:.0f} ms for I/O in {victim.window_s:g} s while {c.key} "
                  f"(agent priority {c.agent_priority}) moved {format_size(int(c.bytes_per_s))}/s, "
                  f"{c.ios_per_s:.0f} I/O/s")
        return Blame(victim.agent, c.key, c.agent, reason)
    return None
