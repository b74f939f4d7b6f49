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


def peak_instant(call, alloc_bytes_per_s):
    """Seconds after `call` starts when it holds its most memory: the offset of its largest
    step plus the time to touch that step's jump over the step before (allocation is not
    instant: in the emulated guest about 140 MiB/s)."""
    if not call.steps:
        return 0.0
    k = max(range(len(call.steps)), key=lambda i: (call.steps[i][1], -i))
    jump = call.steps[k][1] - (call.steps[k - 1][1] if k else 0)
    return call.steps[k][0] + max(0, jump) / alloc_bytes_per_s


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
