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
    summary = {"agentd": {"high_lost": 0, "low_lost": 0, "high_slowdown_max": 1.2, "low_slowdown_max": 1.4},
               "none": {"runs_with_loss": 1}}
    assert dict(report.isolation_targets(summary)) == {
        "agentd: no agent lost": True, "agentd: HIGH <= 1.10x solo": False, "agentd: LOW <= 1.5x solo": True,
        "none: loses an agent in some run": True}


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


def test_peak_instant_adds_the_time_to_touch_the_jump():
    from bench.replay.trace import Call, peak_instant
    c = Call(start=0, end=3, command="x", steps=((0.5, 10 * MiB_), (1.0, 110 * MiB_), (2.0, 0)))
    assert peak_instant(c, 100 * MiB_) == pytest.approx(1.0 + 1.0)    # 100 MiB jump at 100 MiB/s
    assert peak_instant(Call(0, 1, "x", ()), 1) == 0.0


MiB_ = 1 << 20
