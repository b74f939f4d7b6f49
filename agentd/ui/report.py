"""`agentd report`: memory over time per tool call, drawn from the event log into a PNG.

Everything comes from events: tool_start (limits), sample (memory points, see
metrics/samples.py), action (throttle/freeze/kill marks) and tool_end (peak, forecast,
outcome). A call without samples is drawn from its start to its peak at its end. Building
the timeline is pure (tested with literals); only `draw` needs matplotlib, an optional
extra (`pip install 'agentd[plot]'`).
"""

import dataclasses

from ..errors import AgentdError
from ..eventlog import read_events
from .text import printable

MiB = 2**20


@dataclasses.dataclass
class Call:
    agent: str
    tool: str
    tool_class: str = "?"
    argv: list = dataclasses.field(default_factory=list)
    start: float | None = None
    end: float | None = None
    limits: dict = dataclasses.field(default_factory=dict)
    forecast: int | None = None
    peak: int | None = None
    outcome: str | None = None
    samples: list = dataclasses.field(default_factory=list)     # (ts, bytes)
    actions: list = dataclasses.field(default_factory=list)     # (ts, action, reason)

    @property
    def label(self):
        prog = " ".join(" ".join(map(str, self.argv)).split())[:40] or self.tool     # one line, even for scripts
        return printable(f"{self.tool} {prog}")

    def points(self):
        """(ts, bytes) to draw: start at 0, then the samples held to the end; without samples
        a straight line to the peak at the end (all that is known)."""
        pts = ([(self.start, 0)] if self.start is not None else []) + sorted(self.samples)
        if self.end is not None:
            if self.samples:
                pts.append((self.end, pts[-1][1]))
            elif self.peak is not None:
                pts.append((self.end, self.peak))
        return pts

    def peak_mark(self):
        """(ts, bytes) of a peak the samples missed (it came between two samples), else None."""
        if self.end is None or not self.peak or not self.samples:
            return None
        return (self.end, self.peak) if self.peak > 1.05 * max(v for _, v in self.samples) else None

    def limit(self, name):
        v = self.limits.get(name)
        return None if v in (None, "max") else int(v)


def timeline(events, agent=None):
    """{(agent, tool): Call} in start order, from event records."""
    calls = {}

    def get(rec):
        key = (rec.get("agent"), rec.get("tool"))
        if key not in calls:
            calls[key] = Call(agent=key[0], tool=key[1])
        return calls[key]

    for rec in events:
        if agent and rec.get("agent") != agent:
            continue
        kind = rec.get("event")
        if not rec.get("tool") or kind not in ("tool_start", "sample", "action", "tool_end"):
            continue
        c = get(rec)
        ts = rec.get("ts")
        if kind == "tool_start":
            c.start, c.tool_class, c.argv = ts, rec.get("tool_class", "?"), rec.get("argv") or []
            c.limits = dict(rec.get("limits") or {})
        elif kind == "sample" and rec.get("memory_bytes") is not None:
            c.samples.append((ts, rec["memory_bytes"]))
        elif kind == "action":
            c.actions.append((ts, rec.get("action"), rec.get("reason")))
        elif kind == "tool_end":
            c.end, c.peak, c.outcome = ts, rec.get("memory_peak_bytes"), rec.get("outcome")
            c.forecast = rec.get("forecast_bytes")
            c.limits = dict(rec.get("limits") or c.limits)
            c.tool_class = rec.get("tool_class", c.tool_class)
            if not c.argv:
                c.argv = rec.get("argv") or []
            if c.start is None and rec.get("wall_s") is not None:
                c.start = ts - rec["wall_s"]
    return dict(sorted(calls.items(), key=lambda kv: kv[1].start or kv[1].end or 0))


def load(path, agent=None):
    calls = timeline(read_events(path), agent)
    if not calls:
        who = f"agent {agent!r}" if agent else "any agent"
        raise AgentdError(f"no tool calls of {who} in the event log {path}: nothing to draw")
    return calls


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AgentdError("agentd report draws with matplotlib, which is not installed: "
                          "pip install 'agentd[plot]' (or apt-get install python3-matplotlib)") from None
    return plt


def draw(calls, out, title="agentd", max_legend=12):
    """Write a PNG to `out`; returns how many tool calls, samples and actions were drawn."""
    plt = _pyplot()
    t0 = min(c.start or c.end for c in calls.values())
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ranked = sorted(calls.values(), key=lambda c: -(c.peak or 0))[:max_legend]
    n_samples = n_actions = 0
    for i, c in enumerate(calls.values()):
        col = colours[i % len(colours)]
        pts = c.points()
        if not pts:
            continue
        xs = [p[0] - t0 for p in pts]
        ax.plot(xs, [p[1] / MiB for p in pts], color=col, lw=1.4, marker=".", ms=3,
                label=c.label if c in ranked else None)
        n_samples += len(c.samples)
        mark = c.peak_mark()
        if mark:
            ax.plot([mark[0] - t0], [mark[1] / MiB], marker="_", ms=12, mew=2, color=col)
            ax.annotate("peak", (mark[0] - t0, mark[1] / MiB), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, color=col)
        x0, x1 = xs[0], xs[-1]
        for name, style in (("memory.max", "--"), ("memory.high", ":")):
            lim = c.limit(name)
            if lim is not None:
                ax.hlines(lim / MiB, x0, x1, colors=col, linestyles=style, lw=1)
                ax.annotate(name, (x1, lim / MiB), fontsize=7, color=col)
        if c.forecast:
            ax.hlines(c.forecast / MiB, x0, x1, colors=col, linestyles="-.", lw=1, alpha=0.7)
            ax.annotate("forecast", (x0, c.forecast / MiB), fontsize=7, color=col)
        for ts, action, reason in c.actions:
            y = _value_at(pts, ts) / MiB
            ax.plot([ts - t0], [y], marker="v" if action in ("throttle", "freeze") else "x", color="red", ms=9)
            ax.annotate(f"{action}", (ts - t0, y), xytext=(3, 6), textcoords="offset points", fontsize=8,
                        color="red")
            n_actions += 1
        if c.outcome in ("killed", "oom_killed") and c.end is not None:
            ax.annotate(c.outcome, (c.end - t0, pts[-1][1] / MiB), fontsize=8, color="red")
    ax.set_xlabel("seconds since the first tool call")
    ax.set_ylabel("memory (MiB)")
    ax.set_title(f"{title}: memory per tool call (memory.max dashed, memory.high dotted, forecast dash-dot, actions red)")
    ax.grid(alpha=0.3)
    if ranked:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return {"tool_calls": len(calls), "samples": n_samples, "actions": n_actions}


def _value_at(pts, ts):
    """Memory at `ts`: the last point at or before it (step interpolation)."""
    val = pts[0][1]
    for t, v in pts:
        if t > ts:
            break
        val = v
    return val
