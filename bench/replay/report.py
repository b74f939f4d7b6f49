"""Medians over runs and the markdown tables of the replay benchmark (pure)."""

import statistics


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def isolation_summary(iso):
    """Per mode: medians over runs for HIGH and for LOW agents, and the target checks."""
    out = {}
    for mode, m in iso["modes"].items():
        runs = m["runs"]
        high = [a for r in runs for a in r["agents"] if a["priority"] == "high"]
        low = [a for r in runs for a in r["agents"] if a["priority"] != "high"]
        lat = [a.get("alloc_latency_us") for a in high if a.get("alloc_latency_us")]
        s = {"runs": len(runs),
             "runs_with_loss": sum(1 for r in runs if any(a["lost"] for a in r["agents"])),
             "high_lost": sum(a["lost"] for a in high), "low_lost": sum(a["lost"] for a in low),
             "agents": len(high) + len(low),
             "high_slowdown_median": _med([a["slowdown"] for a in high]),
             "high_slowdown_max": max((a["slowdown"] for a in high if a["slowdown"]), default=None),
             "low_slowdown_median": _med([a["slowdown"] for a in low]),
             "low_slowdown_max": max((a["slowdown"] for a in low if a["slowdown"]), default=None),
             "high_slowdown_vs_plain_median": _med([a.get("slowdown_vs_plain") for a in high]),
             "high_slowdown_vs_plain_max": max((a["slowdown_vs_plain"] for a in high if a.get("slowdown_vs_plain")),
                                               default=None),
             "low_slowdown_vs_plain_median": _med([a.get("slowdown_vs_plain") for a in low]),
             "low_slowdown_vs_plain_max": max((a["slowdown_vs_plain"] for a in low if a.get("slowdown_vs_plain")),
                                              default=None),
             "solo_ratio_median": _med([a.get("solo_ratio") for a in high + low]),
             "cpu_busy_mean_max": max((r["cpu_busy"]["mean"] for r in runs if r.get("cpu_busy")), default=None),
             "high_latency_us": {p: _med([x[p] for x in lat]) for p in ("p50", "p95", "p99")} if lat else None,
             # how close the three came to the budget together: a run whose largest
             # combined peak stayed well below 1.0 did not test sharing at all
             "group_peak_ratio_max": max((r["group_peak_bytes"] / r["budget"] for r in runs
                                          if r.get("group_peak_bytes") and r.get("budget")), default=None)}
        for key in ("killed", "failed", "killed_by_agentd", "frozen", "throttled", "queued"):
            s[f"high_{key}"] = sum(a["tool_calls"].get(key, 0) for a in high)
            s[f"low_{key}"] = sum(a["tool_calls"].get(key, 0) for a in low)
        out[mode] = s
    return out


def isolation_table(iso, summary):
    lines = ["| mode | runs | runs losing an agent | HIGH lost | LOW lost | HIGH slowdown (median / max) "
             "| LOW slowdown (median / max) | vs plain solo: HIGH / LOW (max) | agentd solo / plain solo "
             "| CPUs busy (mean, worst run) | HIGH alloc latency p50 / p95 / p99 (µs) "
             "| tool calls killed (HIGH / LOW) | failed | frozen | throttled | queued "
             "| combined peak / budget (max) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, s in summary.items():
        lat = s["high_latency_us"]
        lat_s = " / ".join(_f(lat[p], "{:.0f}") for p in ("p50", "p95", "p99")) if lat else "-"
        lines.append(
            f"| {mode} | {s['runs']} | {s['runs_with_loss']} | {s['high_lost']} | {s['low_lost']} "
            f"| {_vs(s['high_slowdown_median'])} / {_vs(s['high_slowdown_max'])} "
            f"| {_vs(s['low_slowdown_median'])} / {_vs(s['low_slowdown_max'])} "
            f"| {_vs(s['high_slowdown_vs_plain_max'])} / {_vs(s['low_slowdown_vs_plain_max'])} "
            f"| {_vs(s['solo_ratio_median'])} | {_f(s['cpu_busy_mean_max'], '{:.0%}')} | {lat_s} "
            f"| {s['high_killed']} / {s['low_killed']} | {s['high_failed'] + s['low_failed']} "
            f"| {s['high_frozen'] + s['low_frozen']} "
            f"| {s['high_throttled'] + s['low_throttled']} | {s['high_queued'] + s['low_queued']} "
            f"| {_f(s.get('group_peak_ratio_max'))} |")
    return "\n".join(lines)


def isolation_runs_table(iso):
    lines = ["| mode | triple | run | agent | trace | lost (reason) | solo s | s | slowdown "
             "| calls run / planned | killed / failed / frozen / throttled / queued | s frozen / queued |",
             "|---|---:|---:|---|---|---|---:|---:|---:|---:|---|---|"]
    for mode, m in iso["modes"].items():
        for r in m["runs"]:
            for a in r["agents"]:
                tc = a["tool_calls"]
                lost = f"yes ({a['lost_reason']})" if a["lost"] else "no"
                lines.append(f"| {mode} | {r['triple']} | {r['run']} | {a['priority']} | {a['trace']} | {lost} "
                             f"| {_f(a['solo_seconds'], '{:.1f}')} | {_f(a['seconds'], '{:.1f}')} "
                             f"| {_f(a['slowdown'])} | {tc['started']} / {tc['planned']} "
                             f"| {tc['killed']} / {tc.get('failed', 0)} / {tc['frozen']} / {tc['throttled']} / {tc['queued']} "
                             f"| {_time_lost(a)} |")
    return "\n".join(lines)


def _vs(x):
    return "-" if x is None else f"{x:.2f}x"


def _time_lost(a):
    t = a.get("time_s")
    return f"{t['frozen']:.1f} / {t['queued']:.1f}" if t else "–"


def isolation_targets(summary):
    """The issue's targets, each (text, met or None when the mode did not run)."""
    a, n = summary.get("agentd"), summary.get("none")
    out = []
    if a:
        high = a["high_slowdown_vs_plain_max"] or a["high_slowdown_max"]
        low = a["low_slowdown_vs_plain_max"] or a["low_slowdown_max"]
        out.append(("agentd: no agent lost", a["high_lost"] + a["low_lost"] == 0))
        out.append((f"agentd: HIGH <= 1.10x plain solo (max {_vs(high)})", high is not None and high <= 1.10))
        out.append((f"agentd: LOW <= 1.5x plain solo (max {_vs(low)})", low is not None and low <= 1.5))
    if n:
        out.append((f"none: loses an agent in every run ({n['runs_with_loss']} of {n['runs']})",
                    n["runs"] > 0 and n["runs_with_loss"] == n["runs"]))
    return out


def density_table(den):
    lines = ["| mode | agents that fit | steps (n: lost, median slowdown) |", "|---|---:|---|"]
    for mode, m in den["modes"].items():
        steps = ", ".join(f"{s['agents']}: {s['lost']}, {_f(s['median_slowdown'])}x" for s in m["steps"])
        lines.append(f"| {mode} | {m['agents']} | {steps} |")
    return "\n".join(lines)


def density_steps_table(den):
    """Per n: the trace-level figures and bounds, then per mode what the run showed."""
    modes = list(den["modes"])
    b = den.get("bounds") or {"steps": []}
    head = ("| n | peak of summed memory (MiB) | summed mean memory (MiB) | baselines + largest call (MiB) | "
            + " | ".join(f"{m}: lost, median slowdown (vs plain solo), calls killed, CPUs busy mean / p95" for m in modes)
            + " |")
    lines = [head, "|---:|---:|---:|---:|" + "---|" * len(modes)]
    by_mode = {m: {s["agents"]: s for s in den["modes"][m]["steps"]} for m in modes}
    for bs in b["steps"]:
        n = bs["agents"]
        cells = []
        for m in modes:
            s = by_mode[m].get(n)
            if s is None:
                cells.append("–")
                continue
            cpu = s.get("cpu_busy") or {}
            vp = f" ({_vs(s['median_slowdown_vs_plain'])})" if s.get("median_slowdown_vs_plain") else ""
            cells.append(f"{s['lost']}, {_f(s['median_slowdown'])}x{vp}, {s.get('calls_killed', '-')}, "
                         f"{_f(cpu.get('mean'), '{:.0%}')} / {_f(cpu.get('p95'), '{:.0%}')}")
        lines.append(f"| {n} | {bs['peak_of_sum'] / 2**20:.0f} | {bs['sum_of_means'] / 2**20:.0f} "
                     f"| {bs.get('baselines_plus_largest_spike', 0) / 2**20:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def density_targets(den):
    m, out = den["modes"], []
    b = den.get("bounds")
    if "agentd" in m and "none" in m:
        a, n = m["agentd"]["agents"], m["none"]["agents"]
        out.append((f"agentd fits >= 1.5x none ({a} vs {n})", a >= 1.5 * n if n else a > 0))
    if "agentd" in m and b:
        a = m["agentd"]["agents"]
        out.append((f"agentd fits >= 0.8x the fluid bound ({a} vs {b['fluid']})", a >= 0.8 * b["fluid"]))
    if "agentd" in m and "static" in m:
        a, s = m["agentd"]["agents"], m["static"]["agents"]
        out.append((f"agentd fits >= 1.5x static ({a} vs {s})", a >= 1.5 * s if s else a > 0))
    return out
