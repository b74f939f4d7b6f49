"""Whose stall is it: PSI stall time that agentd's own memory.high causes is no shortage.

A tool call held at a memory.high below what it needs (the ladder's throttle step, or a
forecast it outgrew) stalls in reclaim; with no swap it stalls until the limit moves. That
stall shows in every ancestor's memory.pressure, so the agentd root's trigger fires and the
ladder, reading it as shared memory running out, escalates: it freezes and then kills the
very call it throttled, and never sees the calm that relief waits for. So at a pressure
event the scope's stall is set against the stall of the calls held at their memory.high
over the same interval; only what those calls do not explain counts as pressure.

`StallLedger` keeps recent readings of the `total=` counters (taken together for a scope
and its held calls); `own_doing` is the decision on literals.
"""

from collections import deque

KEEP = 12                         # readings per file (a tick apart: a few windows' worth)


class StallLedger:
    def __init__(self, window_s):
        self.window_s = window_s
        self.readings = {}        # path -> deque of (monotonic time, total µs)

    def record(self, path, now, total_us):
        q = self.readings.setdefault(path, deque(maxlen=KEEP))
        if q and now <= q[-1][0]:
            return
        q.append((now, total_us))

    def base(self, path, now, usable=lambda t: True):
        """(time, total µs): the oldest reading at most a window old (the trigger's own
        window), at least MIN_AGE_S old, and `usable` (the held calls' stall is known
        from then), or None."""
        for t, total in self.readings.get(path, ()):
            if MIN_AGE_S <= now - t <= self.window_s and usable(t):
                return t, total
        return None

    def at(self, path, t):
        """The reading taken at time `t` (readings of one tick share their time), or None."""
        for rt, total in self.readings.get(path, ()):
            if rt == t:
                return total
        return None

    def forget(self, path):
        self.readings.pop(path, None)

    def retain(self, paths):
        for p in [p for p in self.readings if p not in paths]:
            del self.readings[p]


def held_delta(total_now, base_t, at_base, started):
    """A held call's stall since the scope's base reading at `base_t`: from its reading
    then, or from zero when it started after it (a new cgroup's counter starts at 0);
    None when neither is known."""
    if at_base is not None:
        return max(total_now - at_base, 0)
    if started is not None and started >= base_t:
        return total_now
    return None


MIN_AGE_S = 0.1                   # shorter intervals say too little about a 2 s window


def own_doing(scope, held, threshold_us, window_s):
    """Is the scope's stall explained by the held calls?

    `scope`: (seconds, stall µs) of the file whose trigger fired; `held`: the held calls'
    stall µs over the same interval (None where a call has no reading for it). True only
    when every held call has a reading and the stall they leave unexplained stays under
    the trigger's rate (threshold per window). Stalls overlap, so their sum can exceed the
    scope's: the unexplained part is then none."""
    if scope is None or not held or any(h is None for h in held):
        return False
    seconds, stall = scope
    allowed = threshold_us * seconds / window_s
    return stall - sum(held) < allowed
