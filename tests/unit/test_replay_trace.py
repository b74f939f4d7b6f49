"""Trace loading, schedule building, scaling and ordering of the replay benchmark."""

import json
import os

import pytest

from bench.replay import report
from bench.replay.runner import call_killed, parse_result, write_schedule, AgentSpec
from bench.replay.scenario import percentiles
from bench.replay.trace import (TraceError, build_schedule, gaps, load_folder, load_trace, scale,
                                 spiky_order)

TRACES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "traces")
MB = 1_000_000


def write(tmp_path, name, samples, calls):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps({"task": name, "samples": samples, "tool_calls": calls}))
    return str(p)


def bash(start, end, cmd="pytest -q"):
    return {"start_s": start, "end_s": end, "tool": "Bash", "command": cmd}


def test_baseline_is_the_sample_before_the_first_call(tmp_path):
    samples = [[0, 5 * MB, 1], [1, 150 * MB, 1], [2, 160 * MB, 1], [3, 170 * MB, 1]]
    calls = [{"start_s": 2.5, "end_s": 2.6, "tool": "Read", "command": ""}, bash(2.7, 2.9)]
    s = build_schedule(load_trace(write(tmp_path, "t", samples, calls)))
    assert s.baseline == 160 * MB           # first call of any tool counts, at t=2.5
    assert len(s.calls) == 1                # Read is not a process


def test_call_profile_is_growth_over_the_memory_just_before_it(tmp_path):
    samples = [[t, m * MB, 1] for t, m in [(0, 100), (1, 100), (2, 300), (3, 500), (4, 120), (5, 100)]]
    s = build_schedule(load_trace(write(tmp_path, "t", samples, [bash(1.5, 3.5)])))
    (c,) = s.calls
    # pre = sample at t=1 (100 MB); window = samples after it up to the first at/after the end
    assert c.steps == ((0.5, 200 * MB), (1.5, 400 * MB), (2.5, 20 * MB))
    assert c.peak == 400 * MB
    assert s.peak == s.baseline + 400 * MB


def test_memory_below_the_pre_call_level_is_zero_not_negative(tmp_path):
    samples = [[0, 300 * MB, 1], [1, 300 * MB, 1], [2, 200 * MB, 1]]
    s = build_schedule(load_trace(write(tmp_path, "t", samples, [bash(1.2, 1.8)])))
    assert s.calls[0].steps == ((0.8, 0),)


def test_overlapping_bash_calls_merge_into_the_first(tmp_path):
    samples = [[t, 100 * MB, 1] for t in range(10)]
    calls = [bash(1, 4, "pytest a"), bash(2, 5, "pip install x"), bash(6, 7, "ls")]
    s = build_schedule(load_trace(write(tmp_path, "t", samples, calls)))
    assert [(c.start, c.end, c.command) for c in s.calls] == [(1, 5, "pytest a"), (6, 7, "ls")]
    assert s.merged == 1


def test_scale_divides_time_and_multiplies_memory(tmp_path):
    samples = [[t, m * MB, 1] for t, m in [(0, 100), (10, 100), (20, 900), (30, 100), (40, 100)]]
    s = build_schedule(load_trace(write(tmp_path, "t", samples, [bash(15, 25)])))
    q = scale(s, speed=10, mem_scale=0.25)
    assert q.baseline == 25 * MB
    assert q.calls[0].start == pytest.approx(1.5) and q.calls[0].end == pytest.approx(2.5)
    # offsets clamp to the scaled duration (the sample at t=30 lies after the end)
    assert q.calls[0].steps == ((pytest.approx(0.5), 200 * MB), (pytest.approx(1.0), 0))
    assert q.duration == pytest.approx(4.0)
    g, tail = gaps(q)
    assert g == [pytest.approx(1.5)] and tail == pytest.approx(1.5)
    with pytest.raises(ValueError):
        scale(s, 0, 1)


def test_not_a_trace_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(TraceError, match="x.json: not a trace"):
        load_trace(str(tmp_path / "x.json"))
    with pytest.raises(TraceError, match="no samples"):
        load_trace(write(tmp_path, "e", [], []))
    with pytest.raises(TraceError, match="no \\*.json"):
        load_folder(str(tmp_path / "..") + "/" + "missing") if False else load_folder(str(_empty(tmp_path)))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_spiky_order_puts_the_largest_replayed_spike_first(tmp_path):
    def trace(name, spike, outside=0):
        # baseline 100 at the first call; a Bash call rising by `spike`; `outside`: a rise
        # outside any Bash call (not replayed, so it must not count)
        samples = [[0, 100, 1], [1, 100, 1], [2, 100 + spike, 1], [3, 100, 1], [4, 100 + outside, 1], [5, 100, 1]]
        return load_trace(write(tmp_path, name, samples, [bash(1.5, 2.5)]))
    order = spiky_order([trace("flat", 0, outside=900), trace("mid", 100), trace("spike", 400)])
    assert [t.name for t in order] == ["spike", "mid", "flat"]


@pytest.mark.skipif(not os.path.isdir(TRACES), reason="shared traces not present in this checkout")
def test_every_shared_trace_builds_a_schedule():
    traces = load_folder(TRACES)
    assert len(traces) >= 3
    for t in traces:
        s = scale(build_schedule(t), 20, 0.25)
        assert s.baseline > 0
        assert all(a.end <= b.start for a, b in zip(s.calls, s.calls[1:]))
        assert all(0 <= off <= c.duration + 1e-9 for c in s.calls for off, _ in c.steps)
        # the replayed peak never exceeds the trace's own peak (scaled)
        low = min(x[1] for x in t.data["samples"])
        assert all(c.peak <= (t.peak - low) * 0.25 + 1 for c in s.calls)


def test_schedule_files_round_trip(tmp_path):
    samples = [[0, 100 * MB, 1], [1, 100 * MB, 1], [2, 300 * MB, 1], [3, 100 * MB, 1]]
    s = scale(build_schedule(load_trace(write(tmp_path, "t", samples, [bash(1.5, 2.5, 'echo "a b"')]))), 1, 1)
    path = write_schedule(AgentSpec("a0", "t", "low", s), str(tmp_path), "/x/bash", ["/bin/agentd", "tool", "--"])
    lines = open(path).read().splitlines()
    assert lines[0] == f"baseline {100 * MB}"
    word, gap, argv_file, prof = lines[1].split()
    assert word == "call" and float(gap) == pytest.approx(1.5)
    assert open(argv_file, "rb").read().split(b"\0")[:-1] == [b"/bin/agentd", b"tool", b"--", b"/x/bash", b"-c",
                                                              b'echo "a b"']
    assert open(prof).read().split("\n")[:2] == ["1.000000", f"0.500000 {200 * MB}"]
    assert lines[-1].startswith("tail ")


def test_result_parsing_and_kill_detection(tmp_path):
    p = tmp_path / "r"
    p.write_text("start 10.0\ncall 0 11.0 12.0 9\nsync 2.5\ncall 1 13.0 14.0 35072\n")
    start, done, calls, waited = parse_result(str(p))
    assert (start, done, waited) == (10.0, None, 2.5) and len(calls) == 2
    assert call_killed(9, via_launcher=False)               # signalled by SIGKILL
    assert call_killed(137 << 8, via_launcher=True)          # the launcher's exit 128+9
    assert not call_killed(137 << 8, via_launcher=False)
    assert not call_killed(0, via_launcher=True)


def test_percentiles_and_targets():
    assert percentiles(list(range(101))) == {"p50": 50, "p95": 95, "p99": 99}
    assert percentiles([1, 2]) == {"p50": 1.5, "p95": 1.9, "p99": 2.0}
    # HIGH and LOW are held to their plain solo (no agentd at all), not agentd's own solo
    summary = {"agentd": {"high_lost": 0, "low_lost": 0, "high_slowdown_max": 1.05, "low_slowdown_max": 1.4,
                          "high_slowdown_vs_plain_max": 1.2, "low_slowdown_vs_plain_max": 1.45},
               "none": {"runs_with_loss": 2, "runs": 3}}
    assert dict(report.isolation_targets(summary)) == {
        "agentd: no agent lost": True, "agentd: HIGH <= 1.10x plain solo (max 1.20x)": False,
        "agentd: LOW <= 1.5x plain solo (max 1.45x)": True,
        "none: loses an agent in every run (2 of 3)": False}
    summary["none"]["runs_with_loss"] = 3
    assert report.isolation_targets(summary)[-1] == ("none: loses an agent in every run (3 of 3)", True)


def _agent(prio, lost=False, slowdown=1.0, frozen=0, lat=None):
    row = {"trace": "t", "priority": prio, "lost": lost, "lost_reason": "x" if lost else None,
           "solo_seconds": 10.0, "seconds": None if lost else 10.0 * slowdown,
           "slowdown": None if lost else slowdown,
           "tool_calls": {"planned": 3, "started": 3, "killed": 0, "failed": 0, "killed_by_agentd": 0,
                          "frozen": frozen, "throttled": 0, "queued": 0}}
    if lat:
        row["alloc_latency_us"] = lat
    return row


def test_isolation_summary_takes_medians_over_runs_and_counts_losses():
    lat = {"p50": 10.0, "p95": 20.0, "p99": 30.0}
    iso = {"modes": {"agentd": {"runs": [
        {"agents": [_agent("high", slowdown=1.0, lat=lat), _agent("low", slowdown=1.2, frozen=2), _agent("low")]},
        {"agents": [_agent("high", slowdown=1.2, lat=lat), _agent("low", lost=True), _agent("low", slowdown=1.4)]},
        {"agents": [_agent("high", slowdown=1.1, lat=lat), _agent("low"), _agent("low")]}]}}}
    s = report.isolation_summary(iso)["agentd"]
    assert (s["runs"], s["runs_with_loss"], s["high_lost"], s["low_lost"]) == (3, 1, 0, 1)
    assert s["high_slowdown_median"] == pytest.approx(1.1) and s["high_slowdown_max"] == pytest.approx(1.2)
    assert s["low_frozen"] == 2 and s["high_latency_us"] == lat
    assert "| agentd | 3 | 1 | 0 | 1 |" in report.isolation_table(iso, {"agentd": s})
    assert s["group_peak_ratio_max"] is None            # runs from before the figure existed
    assert report.isolation_table(iso, {"agentd": s}).endswith("| - |")


def test_isolation_summary_reports_how_close_the_group_came_to_its_budget():
    runs = [{"budget": 100, "group_peak_bytes": 80, "agents": [_agent("high"), _agent("low")]},
            {"budget": 200, "group_peak_bytes": 190, "agents": [_agent("high"), _agent("low")]},
            {"budget": 100, "group_peak_bytes": None, "agents": [_agent("high"), _agent("low")]}]
    s = report.isolation_summary({"modes": {"none": {"runs": runs}}})["none"]
    assert s["group_peak_ratio_max"] == pytest.approx(0.95)
    assert report.isolation_table({}, {"none": s}).endswith("| 0.95 |")


def test_density_target_compares_agentd_with_static():
    den = {"modes": {"static": {"agents": 2, "steps": []}, "agentd": {"agents": 3, "steps": []}}}
    assert report.density_targets(den) == [("agentd fits >= 1.5x static (3 vs 2)", True)]
    den["modes"]["agentd"]["agents"] = 2
    assert report.density_targets(den)[0][1] is False


MiB_ = 1 << 20


def _flat(name, baseline, calls, duration):
    """A scaled Schedule: `calls` as (start, end, bytes above the baseline held throughout)."""
    from bench.replay.trace import Call, Schedule
    return Schedule(name=name, baseline=baseline, duration=duration,
                    calls=tuple(Call(start=a, end=b, command="x", steps=((0.0, m),)) for a, b, m in calls))


def test_density_bounds_no_collision_fluid_and_one_spike():
    # Three agents of 100 MiB each for 10 s; A and B spike +200 MiB, A at 1-2 s, B at 5-6 s,
    # C spikes +50 MiB at 1-2 s: together they peak at A's spike beside B, C and C's spike.
    a = _flat("a", 100 * MiB_, [(1, 2, 200 * MiB_)], 10)
    b = _flat("b", 100 * MiB_, [(5, 6, 200 * MiB_)], 10)
    c = _flat("c", 100 * MiB_, [(1, 2, 50 * MiB_)], 10)
    from bench.replay.trace import density_bounds
    d = density_bounds([a, b, c], 500 * MiB_, dt=0.1)
    assert [s["peak_of_sum"] // MiB_ for s in d["steps"]] == [300, 400, 550]
    # means: 100 + 200 * 0.1 each for a and b (one second of ten), 105 for c
    assert [round(s["sum_of_means"] / MiB_) for s in d["steps"]] == [120, 240, 345]
    assert [s["baselines_plus_largest_spike"] // MiB_ for s in d["steps"]] == [300, 400, 500]
    assert (d["no_collision"], d["spike_beside_baselines"], d["fluid"]) == (2, 3, 3)
    # a bound is the largest n with every count up to it passing
    assert density_bounds([a, b, c], 250 * MiB_, dt=0.1)["fluid"] == 2
    assert density_bounds([a, b, c], 250 * MiB_, dt=0.1)["no_collision"] == 0


def test_cpu_meter_summarises_whole_seconds():
    from bench.replay.runner import CpuMeter
    readings = iter([(0, 0), (50, 100), (150, 200), (160, 300)])
    m = CpuMeter(period=0.0, read=lambda: next(readings))
    assert m.summary() is None
    m.start()
    m.tick(), m.tick(), m.tick(final=True)
    assert m.summary() == {"mean": round(160 / 300, 3), "p95": 0.5, "max": 1.0}


def test_the_largest_call_holds_its_peak_until_the_others_are_there(tmp_path):
    # The real workload program: the call with a hold line stops at its largest step until
    # the hold directory has N entries, reports the wait, then finishes its profile.
    import subprocess
    import time
    from bench.replay.runner import build_alloc
    samples = [[0, 10 * MB, 1], [1, 10 * MB, 1], [2, 14 * MB, 1], [3, 10 * MB, 1], [4, 10 * MB, 1]]
    s = scale(build_schedule(load_trace(write(tmp_path, "t", samples, [bash(1.5, 2.5)]))), 4, 1)
    exe, alias = build_alloc(str(tmp_path / "bin"))
    path = write_schedule(AgentSpec("a0", "t", "low", s, barrier=2), str(tmp_path), alias, [],
                          str(tmp_path / "barrier"))
    lines = open(path).read().splitlines()
    assert lines[1].split()[:4] == ["barrier", str(tmp_path / "barrier"), "a0", "2"]
    assert float(lines[1].split()[5]) == 0.0
    assert lines[2].split()[:4] == ["hold", str(tmp_path / "barrier") + "-hold", "a0", "2"]
    (tmp_path / "barrier").mkdir()
    (tmp_path / "barrier" / "other").touch()            # the other agent is at its call's start
    result = tmp_path / "result"
    p = subprocess.Popen([exe, "agent", path, str(result)])
    hold = tmp_path / "barrier-hold"
    deadline = time.monotonic() + 30
    while not (hold / "a0").exists():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    assert p.poll() is None and "call 0" not in result.read_text()     # held at its peak
    (hold / "other").touch()
    assert p.wait(30) == 0
    start, done, calls, waited = parse_result(str(result))
    assert done is not None and len(calls) == 1 and calls[0][3] == 0
    assert waited >= 0.5                                 # both waits, not counted as replayed time


def test_peak_offset_is_when_the_largest_step_is_due():
    from bench.replay.trace import Call, peak_offset
    c = Call(start=0, end=3, command="x", steps=((0.5, 10 * MiB_), (1.0, 110 * MiB_), (1.5, 110 * MiB_), (2.0, 0)))
    assert peak_offset(c) == 1.0
    assert peak_offset(Call(0, 1, "x", ())) == 0.0
