"""cgroup.freeze really stops a tool call and thawing resumes it."""

import time

import pytest

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel


def test_freeze_stops_and_thaw_resumes(cgtree, cgfs, hog, state, figure):
    cg = cgtree.child("tool")
    counter = state()
    proc = cgtree.spawn(cg, [hog, "count", counter.path])
    wait_for(lambda: counter.value() > 0, 30, "the counter to start")

    t0 = time.monotonic()
    cgfs.freeze(cg)
    wait_for(lambda: cgfs.frozen(cg), 10, "cgroup.events frozen 1")
    freeze_s = time.monotonic() - t0
    frozen_at = counter.value()
    time.sleep(0.5)
    assert counter.value() == frozen_at, "the counter advanced while frozen"

    cgfs.freeze(cg, frozen=False)
    wait_for(lambda: not cgfs.frozen(cg), 10, "cgroup.events frozen 0")
    t1 = time.monotonic()
    wait_for(lambda: counter.value() > frozen_at, 10, "the counter to advance after thaw")
    resume_s = time.monotonic() - t1
    time.sleep(0.5)
    assert proc.poll() is None
    figure("freeze write to frozen", f"{freeze_s * 1000:.0f}", "ms")
    figure("thaw to first counter step", f"{resume_s * 1000:.0f}", "ms")
    figure("counter steps in 0.5 s after thaw", counter.value() - frozen_at)
