"""A read-only snapshot of the daemon's state for `agentd status`, `agentd top` and the API.

Runs on the daemon's loop. Memory comes from the sampler's latest tick (monitor/sampler.py;
what is newer than that tick is read now); the pressure files are read per agent. A cgroup
that vanishes mid-read leaves its fields None, never an error.
"""

import time

from ..kernel import cgroupfs as cgf
from ..kernel import psi


def _read(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def _pressure(fs, cg):
    """{"memory": {"some": avg10, "full": avg10}, "cpu": {...}} where the files exist."""
    out = {}
    for res, name in (("memory", cgf.MEMORY_PRESSURE), ("cpu", cgf.CPU_PRESSURE), ("io", cgf.IO_PRESSURE)):
        p = _read(lambda: psi.parse(fs.read(cg, name)) if fs.has(cg, name) else None)
        if p:
            out[res] = {k: v.get("avg10") for k, v in p.items()}
    return out


def tool_view(sampler, tool, now):
    forecast = getattr(tool.forecast, "peak_bytes", None) if tool.forecast is not None else None
    return {
        "tool": tool.tool_id, "argv": tool.argv[:8], "tool_class": tool.plan.tool_class,
        "rule": tool.plan.rule, "priority": tool.plan.priority, "origin": tool.origin,
        "age_s": round(now - tool.started, 1),
        "memory_bytes": _read(lambda: sampler.tool_memory(tool)),
        "memory_peak_bytes": tool.peak_sample, "limits": tool.limits_applied, "frozen": tool.frozen,
        "forecast_bytes": forecast,
        "actions": [a.get("action") for a in tool.actions],
    }


def agent_view(ctl, sampler, a, now):
    fs = ctl.fs
    tools = [tool_view(sampler, t, now) for t in list(a.tools.values()) if not t.done]
    mem = _read(lambda: sampler.agent_memory(a))
    return {
        "agent": a.agent_id, "agent_class": a.agent_class, "priority": a.priority, "cgroup": a.cgroup,
        "main_cgroup": a.main_cgroup, "age_s": round(now - a.created, 1), "memory_bytes": mem,
        "limits": a.limits_applied, "pressure": _pressure(fs, a.cgroup), "tools": tools,
    }


def snapshot(app, only_agent=None):
    now = time.time()
    ctl = app.ctl
    agents = [agent_view(ctl, app.sampler, a, now) for a in list(ctl.agents.values())
              if not only_agent or a.agent_id == only_agent]
    out = {"agents": agents, "standalone": app.cfg.standalone}
    if only_agent is None:
        started = ctl.counters["tool_started"]
        finished = ctl.counters["tool_finished"]
        out.update({
            "root": app.root, "socket": app.socket_path, "uptime_s": round(now - app.started, 1),
            "event_log": getattr(app.events, "path", None),
            "capabilities": app.caps.as_dict(), "warnings": app.caps.warnings(),
            "modes": {k: v for h in app.hooks for k, v in h.modes().items()},
            "mode_details": {k: v for h in app.hooks
                             for k, v in h.mode_details().items()},
            "pressure": _pressure(ctl.fs, app.root),
            "tool_calls": {"started": sum(started.values()),
                           "finished": {o: sum(v for (_, oo), v in finished.items() if oo == o)
                                        for o in sorted({o for _, o in finished})}},
        })
    return out
