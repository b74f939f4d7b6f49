"""A read-only snapshot of the daemon's state for `agentd status`, the API and metrics."""

import time


def tool_view(tool, now):
    return {
        "tool": tool.tool_id, "argv": tool.argv[:8], "tool_class": tool.plan.tool_class,
        "priority": tool.plan.priority, "origin": tool.origin, "age_s": round(now - tool.started, 1),
        "memory_bytes": tool.peak_sample_current if hasattr(tool, "peak_sample_current") else None,
        "memory_peak_bytes": tool.peak_sample, "limits": tool.limits_applied, "frozen": tool.frozen,
        "forecast_bytes": getattr(tool.forecast, "peak_bytes", None) if tool.forecast is not None else None,
        "actions": [a.get("action") for a in tool.actions],
    }


def snapshot(app, only_agent=None):
    now = time.time()
    ctl = app.ctl
    agents = []
    for a in ctl.agents.values():
        if only_agent and a.agent_id != only_agent:
            continue
        mem = None
        try:
            if ctl.fs.has(a.cgroup, "memory.current"):
                mem = ctl.fs.read_int(a.cgroup, "memory.current")
        except Exception:
            pass
        agents.append({
            "agent": a.agent_id, "agent_class": a.agent_class, "priority": a.priority, "cgroup": a.cgroup,
            "age_s": round(now - a.created, 1), "memory_bytes": mem, "limits": a.limits_applied,
            "tools": [tool_view(t, now) for t in a.tools.values() if not t.done],
        })
    out = {"agents": agents, "standalone": app.cfg.standalone}
    if only_agent is None:
        out.update({
            "root": app.root, "socket": app.socket_path, "uptime_s": round(now - app.started, 1),
            "capabilities": app.caps.as_dict(), "warnings": app.caps.warnings(),
            "modes": {k: v for h in app.hooks for k, v in (getattr(h, "modes", lambda: {})()).items()},
        })
    return out
