#!/usr/bin/env python3
"""Replay agent traces through agentd's tool-call memory forecasters and score them.

    python3 bench/forecast.py --traces DIR [--policy FILE] [--warm DIR] [--json FILE] [--half a|b] [--halves]

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

Configuration. The calls are forecast as the daemon forecasts them under a policy
(`--policy`, default: the shipped policies/default.yaml, read, never restated here): each
call's tool class comes from the policy's rules (`bash -c COMMAND`, as Claude Code runs it),
so its cold start is that class's prior and its history is kept under that class; the
`default` predictor is the policy's `forecast.predictor` with its `forecast.quantile`; and a
forecast above the class's memory.max is cut to it (the daemon tells that limit as the
forecast). Percentages in the policy are of the trace's memory total. The baselines run under
the same classes and caps.

Scores per predictor: under-prediction rate (true peak > forecast), over-provision ratio
forecast / true peak (median and p95, linear interpolation), tool calls scored. Baselines:
`fixed` (class table low 256 MiB / medium 1 GiB / high unlimited = the trace's memory
total: its container limit or host RAM), `last` (last observed peak of the most specific
signature), and `static-task-peak` (an oracle static limit at the task's own peak memory:
the call may use what is left under it, peak - baseline).

Heavy calls. Most calls sit at the floor, where a floored forecast is exact; the calls
whose true peak is above it are the ones a limit can hurt, so every table repeats the
scores for them. `--halves` prints those for the default configuration over the whole
folder and over each half (`--half a` and `--half b`, each replayed from its own empty
history): the headline table; and the same heavy calls split into the first heavy run of
their program in their agent (only other agents' heavy runs of it can speak for it) and the
later ones.
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
from agentd.policy.loader import load_policy  # noqa: E402
from agentd.policy.match import classify_tool  # noqa: E402

STATIC = "static-task-peak"
DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "policies", "default.yaml")


class Config:
    """What the daemon takes from a policy to forecast a call: predictor, its quantile,
    classes (with their memory.max) from the rules. Policies are resolved per memory total."""

    def __init__(self, path=DEFAULT_POLICY):
        self.path = os.path.abspath(path)
        self._by_total = {}
        f = self.policy(64 << 30).forecast
        self.predictor = DEFAULT_PREDICTOR if f.predictor == "default" else f.predictor
        self.quantile = f.quantile

    def policy(self, total):
        if total not in self._by_total:
            self._by_total[total] = load_policy(self.path, host_memory_bytes=total)
        return self._by_total[total]

    def args(self, predictor):
        """The policy's predictor arguments, as agentd/enforce/forecasting.py passes them."""
        return {"q": self.quantile} if predictor == self.predictor == "quantile" else None

    def classify(self, command, total):
        """(tool class, memory.max or None) of a Bash call under the policy."""
        d = classify_tool(self.policy(total), ["bash", "-c", command])
        return d.class_name, d.limits.memory_max


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


def _prepared(trace, floor, config=None):
    """Counted calls of a trace with their signatures and (under a policy) class and cap,
    computed once per run, not per predictor."""
    key = (id(trace), floor, id(config))
    if key not in _PREPARED:
        calls = sorted((c for c in derive_calls(trace, floor) if c["counted"]), key=lambda c: c["start"])
        total = int(trace.get("mem_total_bytes") or 64 << 30)
        out = []
        for c in calls:
            sig = signature(c["command"])
            cls, cap = config.classify(c["command"], total) if config is not None else (sig.tool_class, None)
            out.append((c, sig, cls, cap))
        _PREPARED[key] = (trace, config, out)
    return _PREPARED[key][2]


def replay(traces, predictor, warm=(), floor=FLOOR_BYTES, predictor_args=None, config=None):
    """(forecast, true) of every counted call of `traces`, replayed through one history.
    `config` (a Config): classes, caps and the default predictor's arguments of a policy;
    None: the signatures' own classes, no caps, `predictor_args` as given."""
    store = HistoryStore(":memory:")
    pairs, clock = [], 0.0
    if config is not None and predictor_args is None:
        predictor_args = config.args(predictor)
    for scored, group in ((False, warm), (True, traces)):
        for trace in group:
            calls = _prepared(trace, floor, config)
            budget = int(trace.get("mem_total_bytes") or 64 << 30)
            fc = Forecaster(store, "fixed" if predictor == STATIC else predictor, host_budget=budget, floor_bytes=floor,
                            predictor_args=None if predictor == STATIC else predictor_args)
            if not calls:
                continue
            task_peak = max(s[1] for s in trace["samples"])
            agent = trace.get("task", "")
            pending = []            # (end, record): learnt once a later call starts after it
            for c, sig, cls, cap in calls:
                now = clock + c["start"]
                pending.sort(key=lambda p: p[0])
                while pending and pending[0][0] <= c["start"]:
                    fc.observe(pending.pop(0)[1], now)
                if predictor == STATIC:
                    f = max(task_peak - c["baseline"], floor)
                else:
                    f = fc.forecast(sig, tool_class=cls, agent=agent, now=now).peak_bytes
                    if cap is not None:
                        f = min(f, cap)      # the daemon tells memory.max as the forecast above it
                if scored:
                    pairs.append((f, c["true"]))
                pending.append((c["end"], ToolCallRecord.from_signature(
                    sig, ts=now, peak_bytes=c["growth"], agent=agent, tool_class=cls,
                    duration_s=c["end"] - c["start"], argv=(c["command"],))))
            for _, rec in pending:
                fc.observe(rec, clock)
            clock += (trace["samples"][-1][0] if trace["samples"] else 0) + 3600
    store.close()
    return pairs


def run(traces, warm=(), floor=FLOOR_BYTES, fresh_per_trace=False, config=None):
    default = config.predictor if config is not None else DEFAULT_PREDICTOR
    names = sorted(PREDICTORS, key=lambda n: (n != default, n)) + [STATIC]
    if fresh_per_trace:     # every trace alone: an empty history (plus the warm set) each time
        return {n: score([p for t in traces for p in replay([t], n, warm, floor, config=config)]) for n in names}
    return {n: score(replay(traces, n, warm, floor, config=config)) for n in names}


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


def first_heavy(traces, floor=FLOOR_BYTES, config=None):
    """For every counted call of `traces`, in replay()'s order: True when no call of the same
    program in the same trace (agent) that ended before it started had a true peak above the
    floor, i.e. when only other agents' heavy runs of that program can speak for it."""
    out = []
    for trace in traces:
        calls = _prepared(trace, floor, config)
        for c, sig, _, _ in calls:
            out.append(not any(o["end"] <= c["start"] and o["true"] > floor and s.program == sig.program
                               for o, s, _, _ in calls))
    return out


def headline(folder, config, warm=(), fresh_per_trace=False):
    """Markdown tables: the default configuration on the whole folder and on each half, heavy
    calls (true peak above the floor) first; then its heavy calls split into the first heavy
    run of their program in their agent and the later ones."""
    lines = ["| traces | heavy calls (above the floor) | under-prediction | over-provision median "
             "| over-provision p95 | all calls: under / median |",
             "|---|---:|---:|---:|---:|---:|"]
    split = ["| traces | first heavy run of its program in its agent: calls, under / median "
             "| later heavy runs: calls, under / median |",
             "|---|---:|---:|"]
    for half, label in ((None, "all"), ("a", "half a"), ("b", "half b")):
        traces = load_traces(folder, half)
        if not traces:
            continue
        if fresh_per_trace:
            pairs = [p for t in traces for p in replay([t], config.predictor, warm, config=config)]
        else:
            pairs = replay(traces, config.predictor, warm, config=config)
        r = score(pairs)
        a = r["above_floor"]
        lines.append(f"| {label} ({len(traces)}) | {a['tool_calls']} | {_pct(a['under_prediction_rate'])} | "
                     f"{_x(a['overprovision_median'])} | {_x(a['overprovision_p95'])} | "
                     f"{_pct(r['under_prediction_rate'])} / {_x(r['overprovision_median'])} |")
        first = first_heavy(traces, config=config)
        cells = []
        for want in (True, False):
            m = score([p for p, f in zip(pairs, first) if f == want])["above_floor"]
            cells.append(f"{m['tool_calls']}, {_pct(m['under_prediction_rate'])} / {_x(m['overprovision_median'])}")
        split.append(f"| {label} ({len(traces)}) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines + [""] + split)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True, help="folder of trace JSON files to score")
    ap.add_argument("--warm", help="folder of traces to learn from first (not scored)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--half", choices=("a", "b"),
                    help="score only one half of the instances (crc32 of `instance` mod 2)")
    ap.add_argument("--fresh-per-trace", action="store_true",
                    help="start every trace from an empty (or only warmed) history")
    ap.add_argument("--halves", action="store_true",
                    help="print the default configuration's scores on the whole folder and on each half")
    ap.add_argument("--policy", default=DEFAULT_POLICY,
                    help="the policy whose forecast settings, classes and caps are scored "
                         "(default: the shipped policies/default.yaml)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    traces = load_traces(args.traces, args.half)
    if not traces:
        ap.error(f"no trace files (*.json) in {args.traces}")
    warm = load_traces(args.warm) if args.warm else []
    config = Config(args.policy)
    results = run(traces, warm, fresh_per_trace=args.fresh_per_trace, config=config)
    skipped = sum(1 for t in traces for c in derive_calls(t) if not c["counted"])
    print(f"{len(traces)} traces, policy {os.path.relpath(config.path)} (predictor {config.predictor}, "
          f"quantile {config.quantile:g}, its classes' priors and memory.max), floor {FLOOR_BYTES >> 20} MiB, "
          f"{skipped} overlapping Bash calls skipped"
          + (f", warmed by {len(warm)} traces" if warm else "")
          + (", fresh history per trace" if args.fresh_per_trace else "")
          + f", {time.monotonic() - t0:.1f} s\n")
    print(table(results, config.predictor))
    if args.halves:
        print("\n" + headline(args.traces, config, warm, args.fresh_per_trace))
    if args.json:
        with open(args.json, "w") as fh:
            out = {n: {k: v for k, v in r.items() if k != "above_floor"} for n, r in results.items()}
            heavy = {n: r["above_floor"] for n, r in results.items()}
            json.dump({"predictors": out, "above_floor": heavy, "default": config.predictor, "policy": config.path,
                       "quantile": config.quantile, "floor_bytes": FLOOR_BYTES, "skipped_overlap": skipped},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
