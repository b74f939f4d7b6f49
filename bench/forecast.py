#!/usr/bin/env python3
"""Replay agent traces through agentd's tool-call memory forecasters and score them.

    python3 bench/forecast.py --traces DIR [--warm DIR] [--json FILE] [--half a|b]

Input: a folder of traces in the shared format (one JSON file per agent run with `samples`
[t_s, mem_bytes, cpu%] and `tool_calls` [{start_s, end_s, tool, command}]; see
shared/traces/README.md). Runs in seconds, needs no root.

What is measured. agentd gives each tool call its own cgroup and sets its `memory.high`
from the forecast, so the quantity to predict is the call's *own* memory: how far the
container's memory rises above where it stood when the call started. For each call:

    baseline  = the last sample at or before start_s
    window    = samples after the baseline up to and including the first sample at or
                after end_s (so a call shorter than the sample interval is still seen by
                one sample: its page cache and a not-yet-reaped process show there)
    growth    = max(window) - baseline, at least 0
    true peak = max(growth, FLOOR)        FLOOR = agentd.forecast.FLOOR_BYTES (32 MiB)

The floor is the smallest memory.high agentd sets on a tool call; it lies above the
apparent growth of in-process tool calls in the shared traces (Read/Edit/TodoWrite spawn
no process, yet show p99 13 MiB, p99.5 19 MiB: the agent's own allocator and the
sampler's 3-4 significant digits), so below it a "peak" is noise, and a ratio over it would
divide by ~0. Forecasts are floored the same way.

Which calls count. Only `Bash` calls: the other tools (Read, Edit, Grep, Glob, TodoWrite,
Web*, Task) run inside the agent's own process, get no tool-call cgroup, and their
apparent growth is the agent's. A Bash call whose [start_s, end_s] overlaps another Bash
call (parallel calls, sub-agents) is neither scored nor learnt from: the container's
growth cannot be split between them. Such calls are counted in `skipped_overlap`.

Replay. Traces are replayed one after another (file-name order) into one history, as on a
host that runs agents in turn; within a trace calls are taken in start order and a call's
peak is learnt when it ends (before any later-starting call is forecast). Each trace is
its own agent (the predictors look at the agent's own history first). The history starts
empty, or warmed by replaying `--warm DIR` (learning only, not scored). With
`--fresh-per-trace` every trace starts from that empty (or warmed) history instead: the
first agent on a new host.

Scores per predictor: under-prediction rate (true peak > forecast), over-provision ratio
forecast / true peak (median and p95, linear interpolation), tool calls scored. Baselines:
`fixed` (class table low 256 MiB / medium 1 GiB / high unlimited = the trace's memory
total: its container limit or host RAM), `last` (last observed peak of the most specific
signature), and `static-task-peak` (an oracle static limit at the task's own peak memory:
the call may use what is left under it, peak - baseline).
"""

import argparse
import bisect
import json
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentd.forecast import (DEFAULT_PREDICTOR, FLOOR_BYTES, PREDICTORS, Forecaster,  # noqa: E402
                             HistoryStore, ToolCallRecord, signature)

STATIC = "static-task-peak"


def load_traces(folder, half=None):
    """Traces of `folder` in file-name order; `half` a/b keeps one half of the instances."""
    out = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as fh:
            t = json.load(fh)
        if half is not None:
            key = t.get("instance") or t.get("task") or name
            if "ab"[zlib.crc32(key.encode()) % 2] != half:
                continue
        out.append(t)
    return out


def derive_calls(trace, floor=FLOOR_BYTES):
    """Dicts for the trace's Bash calls: start, end, command, baseline, growth, true, counted."""
    samples = sorted(trace.get("samples") or [], key=lambda s: s[0])
    if not samples:
        return []               # nothing to measure against
    ts = [s[0] for s in samples]
    bash = [c for c in trace.get("tool_calls") or [] if c.get("tool") == "Bash"]
    calls = []
    for k, c in enumerate(bash):
        start, end = c["start_s"], max(c["end_s"], c["start_s"])
        i = max(bisect.bisect_right(ts, start) - 1, 0)
        j = min(bisect.bisect_left(ts, end), len(ts) - 1)
        window = samples[i + 1:j + 1] or samples[i:i + 1]
        base = samples[i][1]
        growth = max(0, max(s[1] for s in window) - base)
        overlap = any(m != k and o["start_s"] < end and start < o["end_s"]
                      for m, o in enumerate(bash))
        calls.append({"start": start, "end": end, "command": c.get("command", ""),
                      "baseline": base, "growth": growth, "true": max(growth, floor),
                      "counted": not overlap})
    return calls


def _quantile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def score(pairs, floor=FLOOR_BYTES):
    """Metrics of (forecast, true) pairs; `above_floor` repeats them for calls whose true
    peak exceeds the floor (most calls sit at the floor, where a floored forecast is exact)."""
    out = _metrics(pairs, [f / t for f, t in pairs])
    if floor is not None:
        big = [(f, t) for f, t in pairs if t > floor]
        out["above_floor"] = _metrics(big, [f / t for f, t in big])
    return out


def _metrics(pairs, ratios):
    if not pairs:               # JSON has no NaN: say "no data" as null
        return {"under_prediction_rate": None, "overprovision_median": None,
                "overprovision_p95": None, "tool_calls": 0}
    return {"under_prediction_rate": round(sum(1 for f, t in pairs if t > f) / len(pairs), 4),
            "overprovision_median": round(_quantile(ratios, 0.5), 3),
            "overprovision_p95": round(_quantile(ratios, 0.95), 3),
            "tool_calls": len(pairs)}


_PREPARED = {}


def _prepared(trace, floor):
    """Counted calls of a trace with their signatures, computed once per run, not per predictor."""
    key = (id(trace), floor)
    if key not in _PREPARED:
        calls = sorted((c for c in derive_calls(trace, floor) if c["counted"]), key=lambda c: c["start"])
        _PREPARED[key] = (trace, [(c, signature(c["command"])) for c in calls])
    return _PREPARED[key][1]


def replay(traces, predictor, warm=(), floor=FLOOR_BYTES, predictor_args=None):
    """(forecast, true) of every counted call of `traces`, replayed through one history."""
    store = HistoryStore(":memory:")
    pairs, clock = [], 0.0
    for scored, group in ((False, warm), (True, traces)):
        for trace in group:
            calls = _prepared(trace, floor)
            budget = int(trace.get("mem_total_bytes") or 64 << 30)
            fc = Forecaster(store, "fixed" if predictor == STATIC else predictor, host_budget=budget, floor_bytes=floor,
                            predictor_args=predictor_args)
            if not calls:
                continue
            task_peak = max(s[1] for s in trace["samples"])
            agent = trace.get("task", "")
            pending = []            # (end, record): learnt once a later call starts after it
            for c, sig in calls:
                now = clock + c["start"]
                pending.sort(key=lambda p: p[0])
                while pending and pending[0][0] <= c["start"]:
                    fc.observe(pending.pop(0)[1], now)
                if predictor == STATIC:
                    f = max(task_peak - c["baseline"], floor)
                else:
                    f = fc.forecast(sig, agent=agent, now=now).peak_bytes
                if scored:
                    pairs.append((f, c["true"]))
                pending.append((c["end"], ToolCallRecord.from_signature(
                    sig, ts=now, peak_bytes=c["growth"], agent=agent,
                    duration_s=c["end"] - c["start"], argv=(c["command"],))))
            for _, rec in pending:
                fc.observe(rec, clock)
            clock += (trace["samples"][-1][0] if trace["samples"] else 0) + 3600
    store.close()
    return pairs


def run(traces, warm=(), floor=FLOOR_BYTES, fresh_per_trace=False):
    names = sorted(PREDICTORS, key=lambda n: (n != DEFAULT_PREDICTOR, n)) + [STATIC]
    if fresh_per_trace:     # every trace alone: an empty history (plus the warm set) each time
        return {n: score([p for t in traces for p in replay([t], n, warm, floor)]) for n in names}
    return {n: score(replay(traces, n, warm, floor)) for n in names}


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def table(results, default):
    lines = ["| predictor | under-prediction | over-provision median | over-provision p95 "
             "| tool calls | calls above floor: under / median / p95 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        label = f"{name} (default)" if name == default else name
        a = r["above_floor"]
        lines.append(f"| {label} | {_pct(r['under_prediction_rate'])} | "
                     f"{_x(r['overprovision_median'])} | {_x(r['overprovision_p95'])} | "
                     f"{r['tool_calls']} | {a['tool_calls']}: {_pct(a['under_prediction_rate'])}"
                     f" / {_x(a['overprovision_median'])} / {_x(a['overprovision_p95'])} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True, help="folder of trace JSON files to score")
    ap.add_argument("--warm", help="folder of traces to learn from first (not scored)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--half", choices=("a", "b"),
                    help="score only one half of the instances (crc32 of `instance` mod 2)")
    ap.add_argument("--fresh-per-trace", action="store_true",
                    help="start every trace from an empty (or only warmed) history")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    traces = load_traces(args.traces, args.half)
    if not traces:
        ap.error(f"no trace files (*.json) in {args.traces}")
    warm = load_traces(args.warm) if args.warm else []
    results = run(traces, warm, fresh_per_trace=args.fresh_per_trace)
    skipped = sum(1 for t in traces for c in derive_calls(t) if not c["counted"])
    print(f"{len(traces)} traces, floor {FLOOR_BYTES >> 20} MiB, {skipped} overlapping Bash calls skipped"
          + (f", warmed by {len(warm)} traces" if warm else "")
          + (", fresh history per trace" if args.fresh_per_trace else "")
          + f", {time.monotonic() - t0:.1f} s\n")
    print(table(results, DEFAULT_PREDICTOR))
    if args.json:
        with open(args.json, "w") as fh:
            out = {n: {k: v for k, v in r.items() if k != "above_floor"} for n, r in results.items()}
            json.dump({"predictors": out, "default": DEFAULT_PREDICTOR,
                       "floor_bytes": FLOOR_BYTES, "skipped_overlap": skipped}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
