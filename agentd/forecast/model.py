"""Values the forecaster exchanges with its callers: frozen, plain data, no behaviour."""

from dataclasses import dataclass, field

MiB = 1 << 20


@dataclass(frozen=True)
class Forecast:
    """A tool call's expected peak memory (bytes above its start), made when it starts.

    `peak_bytes` is an upper estimate the predictor expects the call to stay under (the
    benchmark counts a call whose true peak exceeds it as an under-prediction), already
    at least the forecaster's floor; `source` says which history answered, e.g.
    `quantile:full(12)` or `prior:high`, so a log line can explain a limit.
    """
    peak_bytes: int
    confidence: float           # 0..1: how much history stood behind the number
    source: str


@dataclass(frozen=True)
class LiveForecast:
    """A running call's re-forecast from its memory samples so far."""
    peak_bytes: int
    growth_bytes_per_s: float   # recent growth rate; 0 when flat or shrinking
    seconds_to_limit: float | None   # at that rate, until `limit_bytes`; None = not heading there
    confidence: float


@dataclass(frozen=True)
class ToolCallRecord:
    """One finished tool call, as the history store keeps it."""
    ts: float                   # start time, seconds since the epoch (caller's clock)
    agent: str                  # agent (cgroup) name; history is also looked up per agent
    agent_class: str
    tool_class: str
    sig_full: str
    sig_coarse: str
    sig_program: str
    peak_bytes: int             # the call's own peak (its cgroup's memory.peak)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    exit_status: int | None = None
    action: str = ""            # what agentd did: "", "throttled", "frozen", "killed", ...
    argv: tuple = field(default=())
    # The call was cut short or held down (killed, OOM-killed, throttled, at memory.max):
    # its true peak is at least peak_bytes, not peak_bytes (see forecast/censoring.py).
    censored: bool = False

    @classmethod
    def from_signature(cls, sig, *, ts, peak_bytes, agent="", agent_class="", tool_class=None,
                       argv=(), **kw):
        return cls(ts=ts, agent=agent, agent_class=agent_class,
                   tool_class=tool_class or sig.tool_class, sig_full=sig.full,
                   sig_coarse=sig.coarse, sig_program=sig.program, peak_bytes=int(peak_bytes),
                   argv=tuple(argv) if not isinstance(argv, str) else (argv,), **kw)
