"""The replay workload on the real memory controller: a tiny synthetic trace, replayed as
an agent with one tool call, completes where its budget fits and is lost (OOM kill of the
whole agent, memory.oom.group) where a static limit sits below its peak."""

import json

import pytest

from bench.replay.runner import AgentSpec, Group, build_alloc
from bench.replay.trace import build_schedule, load_trace, scale

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel
MiB = 1 << 20


@pytest.fixture
def schedule(tmp_path):
    # 24 MiB baseline; one Bash call that rises to +48 MiB; times x1 (scaled /4 below).
    samples = [[0, 24 * MiB, 1], [1, 24 * MiB, 1], [2, 72 * MiB, 1], [3, 72 * MiB, 1], [4, 24 * MiB, 1]]
    calls = [{"start_s": 1.5, "end_s": 3.5, "tool": "Bash", "command": "python -m pytest -q"}]
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps({"task": "tiny", "samples": samples, "tool_calls": calls}))
    return scale(build_schedule(load_trace(str(p))), speed=4, mem_scale=1)


def replay(tmp_path, mode, schedule, budget):
    """The one agent's AgentResult and its Group."""
    exe, alias = build_alloc(str(tmp_path / "bin"))
    spec = AgentSpec(name="a0", trace="tiny", priority="high", schedule=schedule, measure_latency=True)
    g = Group(mode, [spec], budget, str(tmp_path / "work"), exe, alias)
    return g.run(timeout=120)[0], g


def test_replayed_agent_holds_its_trace_memory_and_completes(tmp_path, schedule, figure):
    r, g = replay(tmp_path, "none", schedule, 256 * MiB)
    # the group's own memory.peak: what the run held at once, here that one agent
    assert r.peak_bytes <= g.group_peak <= 256 * MiB
    assert r.completed and r.lost_reason is None
    assert (r.calls, r.calls_killed) == (1, 0)
    # the agent's cgroup really held baseline + the call's growth (48 MiB in 1 MiB chunks)
    assert r.peak_bytes >= 70 * MiB
    assert len(r.latencies_us) == 48
    assert r.seconds >= schedule.duration * 0.9
    figure("alloc latency p50 per MiB", sorted(r.latencies_us)[24], "us")


def test_static_limit_below_the_peak_loses_the_agent(tmp_path, schedule):
    # static: each agent's memory.max = budget / n = 48 MiB < 72 MiB peak
    r, _ = replay(tmp_path, "static", schedule, 48 * MiB)
    assert not r.completed
    assert "SIGKILL" in r.lost_reason


def test_the_group_peak_counts_this_run_not_the_cgroups_earlier_ones(cgtree, cgfs, hog, state, tmp_path):
    # The agentd daemon's cgroup serves every run of a benchmark: its memory.peak must be
    # read through a descriptor reset at the run's start, or one run's spike shows in all.
    used = cgtree.child("used")
    done = state()
    p = cgtree.spawn(used, [hog, "alloc", "48", done.path])
    wait_for(lambda: done.value() >= 48, 60, "the hog to touch 48 MiB")
    p.kill()
    p.wait()
    assert cgfs.read_int(used, "memory.peak") >= 48 * MiB
    g = Group("none", [], None, str(tmp_path / "work"), "/bin/true", "/bin/true")
    try:
        g._watch_group_peak(used)
        g._read_peaks()
    finally:
        g._cleanup()
    assert g.group_peak is not None and g.group_peak < 16 * MiB
