"""Plain-text views of a status snapshot and of events, shared by `status`, `top` and `events`.

Pure functions over the JSON the daemon returns, so they are tested with literals.
"""

import time

from ..units import format_size
from .text import printable


def _size(n):
    return "-" if n is None else format_size(n)


def _limit(limits, *names):
    for n in names:
        v = (limits or {}).get(n)
        if v is not None:
            return "max" if v == "max" else format_size(int(v))
    return "-"


def _psi(p, res="memory"):
    v = (p or {}).get(res, {}).get("some")
    return "-" if v is None else f"{v:.1f}%"


def _age(s):
    s = int(s or 0)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _cut(text, width):
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


AGENT_HDR = f"{'AGENT':<22} {'CLASS':<10} {'PRIO':>4} {'TOOLS':>5} {'MEMORY':>10} {'HIGH':>10} {'MAX':>10} " \
            f"{'MEM PSI':>7} {'CPU PSI':>7} {'AGE':>6}"
TOOL_HDR = f"  {'TOOL':<20} {'CLASS':<10} {'MEMORY':>10} {'PEAK':>10} {'FORECAST':>10} {'LIMIT':>10} " \
           f"{'AGE':>6}  {'STATE':<10} COMMAND"


def status_lines(snap, width=160):
    """The `agentd status` table: one line per agent, its running tool calls under it."""
    out = []
    if "uptime_s" in snap:
        tc = snap.get("tool_calls") or {}
        fin = ", ".join(f"{n} {o}" for o, n in (tc.get("finished") or {}).items()) or "none"
        modes = ", ".join(f"{k}={v}" for k, v in sorted((snap.get("modes") or {}).items())) or "none"
        out.append(f"agentd {'standalone' if snap.get('standalone') else 'daemon'} up {_age(snap['uptime_s'])}, "
                   f"root {snap.get('root')}, host memory PSI {_psi(snap.get('pressure'))}")
        out.append(f"tool calls: {tc.get('started', 0)} started; finished: {fin}; modes: {modes}")
        out.append("")
    agents = snap.get("agents") or []
    if not agents:
        out.append("no agents running")
    else:
        out.append(AGENT_HDR)
    for a in agents:
        lim = a.get("limits") or {}
        out.append(f"{_cut(a['agent'], 22):<22} {_cut(a['agent_class'], 10):<10} {a.get('priority', 0):>4} "
                   f"{len(a['tools']):>5} {_size(a.get('memory_bytes')):>10} {_limit(lim, 'memory.high'):>10} "
                   f"{_limit(lim, 'memory.max'):>10} {_psi(a.get('pressure')):>7} "
                   f"{_psi(a.get('pressure'), 'cpu'):>7} {_age(a.get('age_s')):>6}")
        if a["tools"]:
            out.append(TOOL_HDR)
        for t in a["tools"]:
            state = "frozen" if t.get("frozen") else (t["actions"][-1] if t.get("actions") else "running")
            cmd = printable(" ".join(map(str, t.get("argv") or [])))
            line = (f"  {_cut(t['tool'], 20):<20} {_cut(t['tool_class'], 10):<10} {_size(t.get('memory_bytes')):>10} "
                    f"{_size(t.get('memory_peak_bytes')):>10} {_size(t.get('forecast_bytes')):>10} "
                    f"{_limit(t.get('limits'), 'memory.max', 'memory.high'):>10} {_age(t.get('age_s')):>6}  "
                    f"{state:<10} ")
            out.append(line + _cut(cmd, max(width - len(line), 10)))
    for w in snap.get("warnings") or []:
        out.append(f"warning: {w}")
    # Names are validated by the daemon, but a line is only as safe as its least checked
    # field: escape the whole line (escaping is idempotent on escaped text).
    return [printable(line) for line in out]


_SKIP = {"ts", "event", "agent", "tool"}


def event_line(rec):
    """One event as a line for people: time, kind, agent/tool, then the interesting fields."""
    ts = time.strftime("%H:%M:%S", time.localtime(rec.get("ts", 0)))
    who = rec.get("agent") or ""
    if rec.get("tool"):
        who += "/" + str(rec["tool"])
    kind = rec.get("event", "?")
    if kind == "tool_start":
        detail = f"{rec.get('tool_class')} {printable(' '.join(map(str, rec.get('argv') or [])))[:80]}"
    elif kind == "tool_end":
        detail = (f"{rec.get('outcome')} in {rec.get('wall_s', 0):.2f}s, peak {_size(rec.get('memory_peak_bytes'))}"
                  + (f" (forecast {_size(rec['forecast_bytes'])})" if rec.get("forecast_bytes") else "")
                  + (f", actions {','.join(a.get('action', '?') for a in rec['actions'])}" if rec.get("actions") else ""))
    elif kind == "action":
        detail = f"{rec.get('action')} ({rec.get('reason')})"
        if rec.get("old") is not None:
            detail += f" {rec.get('old')} -> {rec.get('new')}"
        if rec.get("after_trigger_s") is not None:
            detail += f", {rec['after_trigger_s'] * 1000:.1f} ms after the trigger"
    elif kind == "sample":
        detail = _size(rec.get("memory_bytes"))
    else:
        detail = " ".join(f"{k}={v}" for k, v in rec.items() if k not in _SKIP and v not in (None, "", [], {}))
    return printable(f"{ts} {kind:<12} {who:<28} {detail}".rstrip())
