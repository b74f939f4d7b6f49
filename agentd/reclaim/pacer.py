"""How much of an idle agent's memory to reclaim now: a pure decision over one reading.

senpai's loop, per agent: while the agent stalls on memory less than a small share of the
time, take a fixed share of what it holds each interval; when it stalls more (it is
faulting back what was taken: that part is its working set), stop for a while. An agent
with a tool call running is not idle: it may need its memory to read the call's result.
"""

from dataclasses import dataclass


@dataclass
class AgentPace:
    """What the stage remembers about one agent between readings."""
    idle_since: float | None = None   # monotonic time its last tool call ended (None: one runs)
    last_at: float | None = None      # when it was last read
    last_stall_us: int | None = None  # its memory.pressure `some` total then
    hold_until: float = float("-inf") # backed off until then
    spell: int = 0                    # bytes reclaimed since it became idle


def step_bytes(cfg, now, pace, current, stall_us):
    """Bytes to reclaim from an agent now (0: not now), given the policy's `reclaim`
    section, its AgentPace, the memory it holds and its stall total (µs). Updates the
    pace's reading; the caller records what was reclaimed."""
    prev_at, prev_stall = pace.last_at, pace.last_stall_us
    if prev_at is not None and now - prev_at < cfg.interval_s:
        return 0                      # not a new interval yet: keep the old reading
    pace.last_at, pace.last_stall_us = now, stall_us
    if pace.idle_since is None or now - pace.idle_since < cfg.idle_s or now < pace.hold_until:
        return 0
    if prev_at is not None and prev_stall is not None and stall_us is not None:
        share = 100.0 * max(0, stall_us - prev_stall) / 1e6 / max(now - prev_at, 1e-6)
        if share > cfg.pressure_max_percent:
            pace.hold_until = now + cfg.backoff_s
            return 0
    if current is None or current <= cfg.floor:
        return 0
    want = int(current * cfg.step_percent / 100.0)
    if cfg.max_step is not None:
        want = min(want, cfg.max_step)
    return max(want, 4096)
