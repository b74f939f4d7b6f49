"""Traces of the shared format -> replay schedules (pure: no I/O except loading JSON).

A trace is one agent run: memory samples [t_s, bytes, cpu%] and tool calls
[{start_s, end_s, tool, command}] (see shared/traces/README.md). One trace = one agent:

- **baseline**: the last sample at or before the first tool call's start (the first sample
  when none is); the agent process holds this much for its whole run.
- **tool calls**: only `Bash` calls become child processes; the other tools (Read, Edit,
  Grep, TodoWrite, Task, ...) run inside Claude Code's own process, so their time is part of
  the agent's idle gaps. Bash calls whose [start, end] overlap (parallel calls, sub-agents)
  are merged into one call (the first one's command): the container's memory cannot be split
  between them.
- **a call's memory profile**: relative to the memory just before it (the last sample at or
  before its start, "pre"): for every sample after pre up to and including the first sample
  at or after its end, (sample time - start, max(0, sample - pre)). This is the method of
  bench/forecast.py, so the calls replayed are the ones the forecaster is scored on.
- **gaps**: the time from one call's end to the next one's start (model inference); the
  agent waits that long after each call *returns*, so a delayed tool call delays the agent.

Scaling (the same for every mode): times are divided by `speed`, memory multiplied by
`mem_scale`.
"""

import bisect
import json
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Call:
    start: float            # seconds since the trace's first sample (scaled: since agent start)
    end: float
    command: str
    steps: tuple            # ((offset_s from call start, bytes above the pre-call level), ...)

    @property
    def duration(self):
        return max(0.0, self.end - self.start)

    @property
    def peak(self):
        return max((b for _, b in self.steps), default=0)


@dataclass(frozen=True)
class Schedule:
    name: str
    baseline: int           # bytes the agent process holds
    calls: tuple            # Call, in start order, not overlapping
    duration: float         # seconds from agent start to the end of its last sample
    merged: int = 0         # Bash calls merged into another (overlap)

    @property
    def peak(self):
        """Expected peak of the replayed agent: baseline plus its largest call."""
        return self.baseline + max((c.peak for c in self.calls), default=0)

    @property
    def peak_call(self):
        """Index of the call with the largest memory profile (None without calls)."""
        if not self.calls:
            return None
        return max(range(len(self.calls)), key=lambda i: (self.calls[i].peak, -i))


def peak_offset(call):
    """Seconds after `call` starts when its profile reaches its largest step (the first of
    equals); 0 without steps."""
    if not call.steps:
        return 0.0
    return max(call.steps, key=lambda st: (st[1], -st[0]))[0]


@dataclass(frozen=True)
class TraceInfo:
    name: str
    path: str
    peak: int
    mean: float
    duration: float
    bash_calls: int
    data: dict = field(repr=False, compare=False)

    @property
    def peak_to_mean(self):
        return self.peak / self.mean if self.mean else 0.0


class TraceError(ValueError):
    """A file that is not a trace of the shared format; the message names the file."""


def load_trace(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise TraceError(f"{path}: cannot read trace: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list) \
            or not isinstance(data.get("tool_calls", []), list):
        raise TraceError(f"{path}: not a trace (needs 'samples' and 'tool_calls' lists)")
    samples = sorted((s for s in data["samples"] if len(s) >= 2), key=lambda s: s[0])
    if not samples:
        raise TraceError(f"{path}: trace has no samples")
    data["samples"] = samples
    mems = [s[1] for s in samples]
    name = data.get("task") or os.path.basename(path)[:-len(".json")]
    return TraceInfo(name=name, path=path, peak=max(mems), mean=sum(mems) / len(mems),
                     duration=samples[-1][0], data=data,
                     bash_calls=sum(1 for c in data.get("tool_calls") or [] if c.get("tool") == "Bash"))


def load_folder(folder):
    """Every *.json trace of `folder` in file-name order (files that are not traces are
    skipped only if they are not JSON objects with samples: a README.json is no trace)."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            out.append(load_trace(os.path.join(folder, name)))
    if not out:
        raise TraceError(f"{folder}: no *.json traces")
    return out


def spike_ratio(info):
    """Replayed peak / baseline of a trace (scale-free): how far its largest Bash call
    lifts the agent above what it holds. The trace's own peak/mean can come from memory
    outside any Bash call (a background job, the agent itself), which the replay does not
    reproduce, so the order uses what is replayed."""
    s = build_schedule(info)
    return s.peak / s.baseline if s.baseline else 0.0


def spiky_order(traces):
    """The fixed order traces are drawn in: spike_ratio, largest first, then name."""
    return sorted(traces, key=lambda t: (-round(spike_ratio(t), 6), t.name))


def _merged_bash(calls):
    """Bash calls in start order with overlapping ones merged; (list, number merged)."""
    bash = sorted((c for c in calls if c.get("tool") == "Bash"), key=lambda c: c["start_s"])
    out, merged = [], 0
    for c in bash:
        start, end = c["start_s"], max(c["end_s"], c["start_s"])
        if out and start < out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
            merged += 1
        else:
            out.append([start, end, c.get("command") or ""])
    return out, merged


def build_schedule(info):
    """The unscaled Schedule of a trace (seconds and bytes as recorded)."""
    samples = info.data["samples"]
    ts = [s[0] for s in samples]
    bash, merged = _merged_bash(info.data.get("tool_calls") or [])
    first = min((c["start_s"] for c in info.data.get("tool_calls") or []), default=None)
    if first is None:
        baseline = samples[-1][1]
    else:
        i = bisect.bisect_right(ts, first) - 1
        baseline = samples[max(i, 0)][1]
    calls = []
    for start, end, command in bash:
        i = max(bisect.bisect_right(ts, start) - 1, 0)
        j = min(bisect.bisect_left(ts, end), len(ts) - 1)
        pre = samples[i][1]
        window = samples[i + 1:j + 1]
        steps = tuple((max(0.0, s[0] - start), max(0, int(s[1] - pre))) for s in window)
        calls.append(Call(start=start, end=end, command=command, steps=steps))
    return Schedule(name=info.name, baseline=int(baseline), calls=tuple(calls),
                    duration=max(ts[-1], calls[-1].end if calls else 0.0), merged=merged)


def scale(schedule, speed, mem_scale):
    """`schedule` with times / speed and bytes * mem_scale (profile offsets clamped to the
    call's scaled duration, so a call's last step lands no later than its end)."""
    if speed <= 0 or mem_scale <= 0:
        raise ValueError("speed and mem_scale must be positive")
    calls = []
    for c in schedule.calls:
        dur = c.duration / speed
        steps = tuple((min(off / speed, dur), int(b * mem_scale)) for off, b in c.steps)
        calls.append(Call(start=c.start / speed, end=c.end / speed, command=c.command, steps=steps))
    return Schedule(name=schedule.name, baseline=int(schedule.baseline * mem_scale), calls=tuple(calls),
                    duration=schedule.duration / speed, merged=schedule.merged)


def gaps(schedule):
    """Idle seconds before each call: from the previous call's end (or agent start) to its
    start; then the tail after the last call."""
    out, prev = [], 0.0
    for c in schedule.calls:
        out.append(max(0.0, c.start - prev))
        prev = c.end
    return out, max(0.0, schedule.duration - prev)


def usage(schedule, dt=0.05):
    """The memory a replayed agent holds over time when nothing delays it: [bytes] per `dt`
    seconds from its start to its end (baseline plus the running call's profile step)."""
    n = max(1, round(schedule.duration / dt))
    out = [schedule.baseline] * n
    for c in schedule.calls:
        steps = sorted(c.steps)
        for k, (off, b) in enumerate(steps):
            lo = round((c.start + off) / dt)
            hi = round((c.start + steps[k + 1][0]) / dt) if k + 1 < len(steps) else round(c.end / dt)
            for i in range(max(lo, 0), min(max(hi, lo + 1), n)):
                out[i] = schedule.baseline + b
    return out


def density_bounds(schedules, budget, dt=0.05):
    """Trace-level bounds for agents 1..len(schedules) started together under `budget`:
    per n, the peak of their summed memory and the sum of their mean memory (each agent's
    mean over its own run), and the two bounds: `no_collision`, the largest n whose summed
    peak stays within the budget (what no control fits if nothing moves in time), and
    `fluid`, the largest n whose summed means do (what perfect packing in time could fit).
    `spike_beside_baselines`: the largest n where the largest call of any of them fits beside
    every agent's baseline (what holding calls back at their start can reach while all n
    agents live: past it, some call collides whenever it runs). A bound is the largest n such
    that every count up to it passes."""
    steps, total, means, baselines, spike = [], [], 0.0, 0, 0
    no_collision = fluid = beside = 0
    for n, s in enumerate(schedules, 1):
        u = usage(s, dt)
        if len(u) > len(total):
            total += [0] * (len(u) - len(total))
        for i, b in enumerate(u):
            total[i] += b
        means += sum(u) / len(u)
        baselines += s.baseline
        spike = max(spike, s.peak - s.baseline)
        peak = max(total)
        if peak <= budget and no_collision == n - 1:
            no_collision = n
        if means <= budget and fluid == n - 1:
            fluid = n
        if baselines + spike <= budget and beside == n - 1:
            beside = n
        steps.append({"agents": n, "peak_of_sum": int(peak), "sum_of_means": int(means),
                      "baselines_plus_largest_spike": int(baselines + spike)})
    return {"budget": budget, "no_collision": no_collision, "fluid": fluid,
            "spike_beside_baselines": beside, "steps": steps}


def budget_for(schedules, fit, dt=0.05):
    """A density budget under which no control fits `fit` agents at the trace level: midway
    between the peak of the first `fit` agents' summed memory and the next larger peak as
    more join (so `fit` agents do not collide, the next count that adds memory does).
    Derived from the traces, so a folder the benchmark never saw gets its budget by the
    same rule. None when fewer agents than needed are given."""
    peaks = [s["peak_of_sum"] for s in density_bounds(schedules, float("inf"), dt)["steps"]]
    if len(peaks) <= fit:
        return None
    above = [p for p in peaks[fit:] if p > peaks[fit - 1]]
    return (peaks[fit - 1] + above[0]) // 2 if above else None


def half_of(traces, half):
    """The traces of one half of the issue instances ("a" or "b": crc32 of the trace's
    `instance`, else its name, mod 2), the split bench/forecast.py --half uses: a folder's
    two halves never share an instance, so one can be held out from the other."""
    import zlib
    return [t for t in traces if "ab"[zlib.crc32((t.data.get("instance") or t.name).encode()) % 2] == half]
