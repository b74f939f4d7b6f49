"""How much of the shared memory a fast-growing tool call can still use up (pure).

The memory watch reports a call growing fast; the growth is urgent when, carried over
`pressure.memory_watch_horizon_s`, it would use up the memory all agents share (the host's
MemAvailable, or what agentd's own limit leaves). A burst's pace alone overstates that:
a call cannot grow past the tightest memory.max above it (its own, its agent's, one on
agentd's root), because the kernel reclaims or OOM-kills there (agentd/oom.py orders the
kill: the call, never the agent). Growth bounded below the shared pool can take from the
pool no more than that bound. Projecting the pace alone made a call of an agent capped at
192 MiB look like a threat to 630 MiB of free memory, and the ladder throttled it.

A forecast with evidence behind it bounds the projection too, while the call is below it:
a 0.4 s call growing 250 MiB/s is not a 500 MiB call when its history says 100 MiB.
"""

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Projection:
    grow: int                 # bytes the call may still add within the horizon
    pace: int                 # rate x horizon, before any bound
    bound: Optional[str]      # what held the projection below its pace (None: nothing did)
    urgent: bool              # the growth would use up the shared memory left


def project(rate_bytes_per_s, horizon_s, shared_room, forecast_left=None, limit_rooms=()):
    """The growth a call may add within `horizon_s`, and whether it uses up `shared_room`.

    `forecast_left`: what a forecast with evidence still allows (None: no such bound).
    `limit_rooms`: (name, bytes) of the room under each memory.max above the call, the
    call's own included; None rooms are unknown and bound nothing. `shared_room` None
    (free memory unknown) is never urgent: there is nothing to set the growth against.
    Growth that reaches the whole of what is left is urgent: the last byte is as gone as
    the others."""
    pace = max(int(rate_bytes_per_s * horizon_s), 0)
    grow, bound = pace, None
    if forecast_left is not None and max(int(forecast_left), 0) < grow:
        grow, bound = max(int(forecast_left), 0), "its forecast"
    for name, room in limit_rooms:
        if room is not None and max(int(room), 0) < grow:
            grow, bound = max(int(room), 0), name
    urgent = shared_room is not None and grow > 0 and grow >= shared_room
    return Projection(grow, pace, bound, urgent)
