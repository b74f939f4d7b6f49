"""Which finished tool calls showed only a lower bound of their memory need (pure).

A forecast learns "how much does this command need" from recorded peaks. A call that was
stopped or held down never reached its need, so its peak is censored: the true peak is at
least the recorded one. Those are:
- calls killed (agentd's ladder or GPU budget: outcome `killed`; the kernel's OOM killer:
  `oom_killed` or an `oom_kill` memory event) or ended by a signal (`signaled`: a timeout
  or an interrupt stopped them before they were done);
- calls the ladder throttled (a `throttle` action: memory.high set below what they used);
- calls that reached their memory.max (a `max` memory event: the kernel reclaimed at the
  hard limit, so the peak is the limit).
Not censored: calls that only met the memory.high agentd set from their forecast (a `high`
event). That limit sits a headroom above the forecast and the re-forecast raises it while
the call grows, so what it reclaims is mostly page cache the call can do without; counting
every such call as cut off would ratchet cache-heavy commands' forecasts up without end.
A freeze does not censor either: a frozen call resumes and reaches its own peak.
"""

CUT_OUTCOMES = frozenset({"killed", "oom_killed", "signaled"})
CUT_ACTIONS = frozenset({"throttle", "kill", "kill_main"})
CUT_EVENTS = ("max", "oom_kill")


def censored(outcome, actions=(), memory_events=None):
    """True when a call's recorded peak is only a lower bound of its need.

    `outcome` is the controller's (ok, failed, signaled, killed, oom_killed, unknown),
    `actions` the names of the enforcement actions taken on it, `memory_events` its
    memory.events deltas ({"max": n, "oom_kill": n, ...})."""
    if outcome in CUT_OUTCOMES:
        return True
    if any(a in CUT_ACTIONS for a in actions):
        return True
    ev = memory_events or {}
    return any((ev.get(k) or 0) > 0 for k in CUT_EVENTS)
