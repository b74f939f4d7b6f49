"""cpu.weight shares one CPU by weight; pids.max contains a fork bomb."""

import os
import statistics
import time

import pytest

from .kernel_support import cpu_time_windows, wait_for

pytestmark = pytest.mark.kernel


def usage_usec(cgfs, cg):
    return cgfs.read_flat_keyed(cg, "cpu.stat")["usage_usec"]


def test_cpu_weight_400_vs_100_on_one_cpu(cgtree, cgfs, hog, figure):
    heavy = cgtree.child("heavy", cpu_weight="400")
    light = cgtree.child("light", cpu_weight="100")
    # Both spinners on the last CPU, so they compete; the test itself stays off it mostly.
    cpu = {max(os.sched_getaffinity(0))}
    cgtree.spawn(heavy, [hog, "spin"], cpus=cpu)
    cgtree.spawn(light, [hog, "spin"], cpus=cpu)
    wait_for(lambda: usage_usec(cgfs, light) > 0 and usage_usec(cgfs, heavy) > 0, 30,
             "both spinners to run")
    time.sleep(0.5)  # past start-up

    windows, _ = cpu_time_windows(cgfs, [heavy, light])
    for (dh, dl), wall_us in windows:
        assert dl > 0, "the light spinner got no CPU at all in a window"
        # One CPU's worth in total: they really shared a CPU.
        assert (dh + dl) < wall_us * 1.15, (dh, dl, wall_us)
    ratios = sorted(dh / dl for (dh, dl), _ in windows)
    ratio = statistics.median(ratios)
    assert 2.5 <= ratio <= 6, f"CPU-time ratio {ratio:.2f} (median of {ratios}) for weights 400:100"
    figure("CPU-time ratio (weights 400:100), median of 3 windows", f"{ratio:.2f}")
    figure("CPU-time ratio per window", " / ".join(f"{r:.2f}" for r in ratios))
    busy = sum(sum(d) for d, _ in windows) / sum(w for _, w in windows)
    figure("shared CPU busy", f"{busy * 100:.0f}", "%")


def test_pids_max_stops_a_fork_bomb_while_the_agent_forks(cgtree, cgfs, hog, state, figure):
    limit, attempts = 16, 200
    agent = cgtree.child("agent")
    tool = cgtree.child("tool", pids_max=str(limit))

    bomb = state()
    cgtree.spawn(tool, [hog, "forkbomb", str(attempts), bomb.path])
    wait_for(lambda: "forked" in bomb.fields(), 60, "the fork bomb to report")
    _, forked, _, failed = bomb.fields()
    forked, failed = int(forked), int(failed)

    assert forked == limit - 1, f"forked {forked} with pids.max {limit} (the bomb itself is one)"
    assert failed == attempts - forked
    assert cgfs.read_int(tool, "pids.current") == limit
    assert cgtree.events(tool, "pids.events")["max"] >= 1

    # The agent, in a sibling cgroup, still forks freely while the bomb holds its limit.
    ok = state()
    cgtree.spawn(agent, [hog, "forkbomb", "8", ok.path])
    wait_for(lambda: "forked" in ok.fields(), 60, "the agent's forks to report")
    assert ok.fields() == ["forked", "8", "failed", "0"]
    figure("fork bomb: forked / refused", f"{forked} / {failed}")
    figure("pids.events max", cgtree.events(tool, "pids.events")["max"])
