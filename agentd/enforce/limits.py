"""Adaptive memory.high: pure arithmetic over forecasts, usage and free memory.

memory.high is the soft limit: past it the kernel reclaims and slows the call down rather
than killing it, so it is where a forecast belongs. memory.max stays the policy's hard cap
(the class's `memory.max`), and memory.high never goes above it.
"""

MiB = 1 << 20
# Moves smaller than this are not written: a limit that twitches every sample costs
# writes and log lines and changes nothing the kernel would notice.
MIN_MOVE_BYTES = 8 * MiB
MIN_MOVE_FRACTION = 0.10


def as_bytes(v):
    """A cgroupfs limit value ("max", "123", 123, None) as bytes; None = no limit."""
    if v is None or v == "max":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _cap(value, cap):
    return value if cap is None else min(value, cap)


def start_high(forecast_peak, headroom, min_high, cap=None):
    """memory.high for a starting call: forecast x headroom, at least `min_high`, at most
    `cap` (the class's memory.max; None = none)."""
    return int(_cap(max(int(min_high), int(forecast_peak * headroom)), cap))


def adapt_high(current_high, live_peak, headroom, min_high, cap=None, usage=0, available=None):
    """memory.high for a running call from its live re-forecast, or None to leave it.

    The target follows the re-forecast peak x headroom. Free host memory bounds a raise:
    the call may grow into at most half of what the host still has (the other half is for
    everyone else), but the limit is never pushed below what the call holds now — taking
    memory back is the pressure ladder's job, not this one's.
    """
    target = max(int(min_high), int(live_peak * headroom))
    if available is not None:
        target = min(target, max(int(usage) + int(available) // 2, int(min_high)))
    target = max(target, int(usage), int(min_high))
    target = _cap(target, cap)
    if current_high is None:
        return int(target)
    if abs(target - current_high) < max(MIN_MOVE_BYTES, current_high * MIN_MOVE_FRACTION):
        return None
    return int(target)


def throttle_high(usage, factor, min_high, current_high=None, room=None):
    """The throttle step: memory.high = usage x factor, at least `min_high`, never above the
    limit already in place (throttling must not loosen anything).

    Where the memory left to the call (`room`: free memory, or its agent's own memory.max
    less what the agent holds) is known, the call is held to what it has plus half of that,
    as a running call's limit may grow into half of the free memory (adapt_high), and no
    tighter: with no swap, a limit below what a call holds cannot take anonymous memory
    back, it only stalls the call, and a throttle that merely stops the growth is enough.
    """
    v = max(int(min_high), int(usage * factor))
    if room is not None:
        v = max(v, int(usage) + max(int(room), 0) // 2)
    if current_high is not None:
        v = min(v, current_high)
    return v
