"""Memory enforcement on the real kernel: memory.max OOM-kills, memory.high throttles,
and a PSI trigger on a cgroup's memory.pressure fires under a hog."""

import os
import select
import signal
import time

import pytest

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel

MIB = 1024 * 1024


def test_memory_max_oom_kills_the_tool_call_and_spares_the_agent(cgtree, cgfs, hog, state, figure):
    agent = cgtree.child("agent")
    tool = cgtree.child("tool", memory_max=str(32 * MIB))
    counter = state()
    main = cgtree.spawn(agent, [hog, "count", counter.path])
    wait_for(lambda: counter.value() > 0, 30, "the agent's counter to start")

    touched = state()
    t0 = time.monotonic()
    call = cgtree.spawn(tool, [hog, "alloc", "256", touched.path])
    rc = call.wait(timeout=120)
    killed_after = time.monotonic() - t0

    assert rc == -signal.SIGKILL, f"the hog exited {rc}, not by the OOM killer's SIGKILL"
    events = cgtree.events(tool)
    assert events["oom_kill"] >= 1, events
    assert events["max"] >= 1, events
    assert touched.value() < 32, "the hog touched more than memory.max"
    peak = cgfs.read_int(tool, "memory.peak")
    assert peak <= 32 * MIB
    # The agent's main process in the sibling cgroup is untouched and still running.
    assert cgtree.events(agent)["oom_kill"] == 0
    before = counter.value()
    wait_for(lambda: counter.value() > before, 10, "the agent's counter to advance after the OOM")
    assert main.poll() is None
    figure("start to OOM kill", f"{killed_after:.2f}", "s")
    figure("MiB touched before the kill", touched.value(), "MiB")
    figure("memory.peak", f"{peak / MIB:.1f}", "MiB")


def test_memory_high_throttles_without_killing(cgtree, cgfs, hog, state, figure):
    size = 48  # MiB each hog touches; 3x the limit below, small next to the guest's 1 GiB
    high = 16
    free = cgtree.child("free")
    limited = cgtree.child("limited", memory_high=str(high * MIB))

    # Baseline: the same hog with no limit, timed from its first MiB (process start-up
    # under emulation would otherwise dominate).
    base = state()
    cgtree.spawn(free, [hog, "alloc", str(size), base.path])
    wait_for(lambda: base.value() >= 1, 30, "the baseline hog to start")
    t0 = time.monotonic()
    wait_for(lambda: base.value() >= size, 60, "the baseline hog to finish", step=0.005)
    base_rate = (size - 1) / (time.monotonic() - t0)

    slow = state()
    call = cgtree.spawn(limited, [hog, "alloc", str(size), slow.path])
    wait_for(lambda: slow.value() >= high, 60, "the limited hog to reach memory.high")
    high_before = cgtree.events(limited)["high"]
    window = 3.0
    v0, t0 = slow.value(), time.monotonic()
    time.sleep(window)
    v1, t1 = slow.value(), time.monotonic()
    throttled_rate = (v1 - v0) / (t1 - t0)
    events = cgtree.events(limited)

    assert call.poll() is None, "memory.high must throttle, not kill"
    assert events["oom_kill"] == 0, events
    assert events["high"] > high_before, events
    assert v1 < size, "the hog finished despite memory.high"
    assert throttled_rate < base_rate / 4, (throttled_rate, base_rate)
    current = cgfs.read_int(limited, "memory.current")
    figure("unthrottled allocation rate", f"{base_rate:.1f}", "MiB/s")
    figure("rate above memory.high", f"{throttled_rate:.2f}", "MiB/s")
    figure("slow-down", f"{base_rate / max(throttled_rate, 1e-3):.0f}", "x")
    figure("memory.events high", events["high"])
    figure("memory.current vs memory.high", f"{current / MIB:.1f} / {high}", "MiB")


def test_psi_trigger_fires_under_a_memory_hog(cgtree, cgfs, hog, state, figure):
    cg = cgtree.child("hog", memory_high=str(16 * MIB))
    idle = cgtree.child("idle")
    fds = [os.open(cgfs.path(c, "memory.pressure"), os.O_RDWR | os.O_NONBLOCK) for c in (cg, idle)]
    try:
        pollers = []
        for fd in fds:
            # 150 ms of "some" stall within a 1 s window; the kernel wants the trailing
            # NUL on some paths (see shared/ENVIRONMENT.md) and accepts it on all.
            os.write(fd, b"some 150000 1000000\0")
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            pollers.append(poller)
        assert pollers[0].poll(0) == [], "trigger fired before any pressure"

        t0 = time.monotonic()
        cgtree.spawn(cg, [hog, "alloc", "128", state().path])
        events = pollers[0].poll(30_000)
        fired_after = time.monotonic() - t0
        # The trigger is per cgroup: the idle sibling's must stay quiet.
        idle_events = pollers[1].poll(0)
    finally:
        for fd in fds:
            os.close(fd)

    assert events, "no PSI notification within 30 s"
    assert events[0][1] & select.POLLPRI, events
    assert not events[0][1] & select.POLLERR, events
    assert idle_events == [], f"the idle sibling's trigger fired: {idle_events}"
    some = cgfs.read(cg, "memory.pressure").splitlines()[0]
    total_us = int(some.rsplit("total=", 1)[1])
    assert total_us > 0, some
    figure("hog start to PSI notification", f"{fired_after:.2f}", "s")
    figure("memory.pressure some total after notification", f"{total_us / 1000:.0f}", "ms")
