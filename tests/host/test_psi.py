"""PSI triggers on the host's cgroup v2 tree: registration rules (2 s windows without
CAP_SYS_RESOURCE), the epoll integration, and teardown with the cgroup."""

import asyncio
import os
import time

import pytest

from agentd.errors import FeatureMissing
from agentd.kernel import psi
from agentd.kernel.cgroupfs import MEMORY_PRESSURE


def _cap_sys_resource():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def test_pressure_file_parses(cgfs, test_root):
    cgfs.mkdir(test_root)
    p = psi.read(cgfs.path(test_root, MEMORY_PRESSURE))
    assert set(p["some"]) >= {"avg10", "avg60", "avg300", "total"}
    assert p["some"]["total"] >= 0


def test_trigger_with_a_2s_window_registers_and_stays_quiet(cgfs, test_root):
    cgfs.mkdir(test_root)
    ts = psi.TriggerSet()
    try:
        ts.add("t", cgfs.path(test_root, MEMORY_PRESSURE), 500_000, 2_000_000)
        assert ts.keys() == ["t"]
        # An empty cgroup has no stalls: nothing may be pending.
        assert ts.ready(0.2) == ([], [])
    finally:
        ts.close()


def test_sub_2s_window_is_refused_with_advice_without_cap_sys_resource(cgfs, test_root):
    if _cap_sys_resource():
        pytest.skip("this host grants CAP_SYS_RESOURCE: any window from 0.5 s is accepted")
    cgfs.mkdir(test_root)
    with pytest.raises(FeatureMissing, match="multiples of 2 s"):
        psi.Trigger(cgfs.path(test_root, MEMORY_PRESSURE), 150_000, 1_000_000)


def test_trigger_fd_is_reported_gone_when_its_cgroup_is_removed(cgfs, test_root):
    cg = f"{test_root}/gone"
    cgfs.makedirs(cg)
    ts = psi.TriggerSet()
    try:
        ts.add("g", cgfs.path(cg, MEMORY_PRESSURE), 500_000, 2_000_000)
        cgfs.rmdir(cg)
        fired, gone = ts.ready(1.0)
        assert fired == [] and gone == ["g"]
        assert ts.keys() == []
    finally:
        ts.close()


def test_trigger_thread_hands_events_to_an_asyncio_loop(cgfs, test_root):
    """The daemon's path: the set's own thread waits, the loop gets each batch. (The set's
    epoll must not sit on the loop itself: see kernel/psi.py.)"""
    cg = f"{test_root}/x"
    cgfs.makedirs(cg)
    ts = psi.TriggerSet()
    seen = []

    async def main():
        loop = asyncio.get_running_loop()
        ts.add("x", cgfs.path(cg, MEMORY_PRESSURE), 500_000, 2_000_000)
        ts.start(lambda fired, gone, t: loop.call_soon_threadsafe(seen.append, (fired, gone)))
        await asyncio.sleep(0.1)
        assert seen == []                 # no pressure: nothing delivered
        cgfs.rmdir(cg)                    # teardown is an EPOLLERR event on the fd
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)

    try:
        asyncio.run(main())
        t0 = time.monotonic()
        ts.stop()                         # wakes the blocked waiter at once
        assert time.monotonic() - t0 < 1.0
    finally:
        ts.close()
    assert seen == [([], ["x"])]
    assert ts.keys() == []


def test_daemon_falls_back_to_polling_with_one_warning_when_triggers_are_refused(tmp_path, test_root):
    """A 1 s window is refused on this host (no CAP_SYS_RESOURCE): the daemon says so once
    and polls the pressure files instead, for the root and for every agent."""
    if _cap_sys_resource():
        pytest.skip("this host grants CAP_SYS_RESOURCE: a 1 s window is accepted")
    import subprocess
    from tests.helpers import REPO, DaemonProc, agentd_cmd
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\npressure: {psi_some_threshold_us: 100000, psi_window_us: 1000000}\n"
                      "detection: {enabled: false}\n")
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy))
    d.start()
    try:
        assert d.request({"op": "status"})["modes"]["pressure"] == "poll"
        r = subprocess.run(agentd_cmd() + ["run", "--", "true"], env=d.env, cwd=REPO, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        d.cleanup()
    log = d.log()
    assert log.count("PSI triggers unavailable") == 1, log
    assert "multiples of 2 s" in log


def test_a_trigger_thread_that_dies_leaves_the_watch_polling(cgfs, test_root, caplog):
    """An exception in the trigger thread (here: handing a batch to the loop fails) ends
    it, and trigger events stop. The watch's next poll (the enforcer's tick) notices,
    logs it once, closes the triggers and polls every file, the removed cgroup's included."""
    from agentd.enforce.pressure import POLL_AFTER_THREAD_DIED, PressureWatch
    cg_a, cg_b = f"{test_root}/a", f"{test_root}/b"
    cgfs.makedirs(cg_a)
    cgfs.makedirs(cg_b)
    w = PressureWatch(500_000, 2_000_000, lambda key, now, how: None)
    w.watch("a", cgfs.path(cg_a, MEMORY_PRESSURE))
    w.watch("b", cgfs.path(cg_b, MEMORY_PRESSURE))

    def broken(fired, gone, seen):
        raise RuntimeError("cannot hand the batch over")

    async def main():
        w._from_thread = broken
        w.start(asyncio.get_running_loop())
        assert w.mode == "psi-trigger" and sorted(w.triggers.keys()) == ["a", "b"]
        cgfs.rmdir(cg_b)                  # an EPOLLERR batch: delivering it kills the thread
        for _ in range(200):
            if w.triggers.died():
                break
            await asyncio.sleep(0.01)
        triggers = w.triggers
        with caplog.at_level("ERROR", logger="agentd.enforce"):
            w.poll()
            w.poll()
        return triggers

    try:
        triggers = asyncio.run(main())
    finally:
        w.stop()
    assert w.mode == POLL_AFTER_THREAD_DIED and w.triggers is None
    assert triggers.keys() == []          # closed: no fd left registered
    assert list(w.paths) == ["a"]         # b's file is gone: unwatched by the poll
    assert len([r for r in caplog.records if "PSI trigger thread died" in r.getMessage()]) == 1
