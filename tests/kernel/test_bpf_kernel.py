"""agentd's BPF programs on the kernel-tier kernel (7.x, full cgroup v2).

The objects are built against no particular kernel (CO-RE): loading them here proves the
relocations resolve on a kernel other than the build host's.
"""

import threading
import time

import pytest

from agentd.kernel import bpf_types as T
from agentd.kernel.bpf_lifecycle import Lifecycle
from agentd.kernel.bpf_memwatch import MemWatch
from agentd.kernel.bpf_probe import bpf_status
from agentd.kernel.bpf_userspace import ProcFS
from agentd.monitor.events import MemReason, ProcKind, decode_mem, decode_proc

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20


class Reader:
    """Drains a ring buffer from a thread, stamping each record with its arrival time."""

    def __init__(self, prog, decode):
        self.items = []
        self.rb = prog.ring_buffer(lambda d: self.items.append((time.monotonic_ns(), decode(d))))
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        while not self.stop.is_set():
            self.rb.poll(20)

    def close(self):
        self.stop.set()
        self.th.join()
        self.rb.close()


def test_bpf_mode_with_tp_btf_on_this_kernel():
    st = bpf_status()
    assert st["mode"] == "bpf" and st["flavour"] == "tp_btf", st


def test_lifecycle_events_for_a_watched_tree(cgtree, cgfs):
    cg = cgtree.child("tool")
    lc = Lifecycle()
    rd = Reader(lc, decode_proc)
    try:
        lc.watch(cgfs.cgroup_id(cgtree.name), T.AGENTD_WATCH_TREE)
        p = cgtree.spawn(cg, ["sh", "-c", "exit 4", "arg"])
        assert p.wait(60) == 4
        wait_for(lambda: any(e.kind == ProcKind.EXIT and e.pid == p.pid for _, e in rd.items), 20, "exit event")
        mine = [e for _, e in rd.items if e.pid == p.pid]
        ex = next(e for e in mine if e.kind == ProcKind.EXEC)
        assert ex.argv == ("sh", "-c", "exit 4", "arg") and ex.cgroup_id == cgfs.cgroup_id(cg)
        assert next(e for e in mine if e.kind == ProcKind.EXIT).exit_code == 4
    finally:
        rd.close()
        lc.close()


def test_dead_man_switch_on_this_kernel(cgtree, cgfs):
    """The heartbeat check and the held map work here too: with a stale beat the exec
    runs unstopped; a task held while the beat stops is resumed by the exec watchdog."""
    import os
    import signal
    from agentd.kernel import exec_watchdog

    main = cgtree.child("main")
    lc = Lifecycle()
    rd = Reader(lc, decode_proc)
    hung = threading.Event()
    beater, dog = None, None
    try:
        lc.watch(cgfs.cgroup_id(main), T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC)
        lc.beat(0.25)
        time.sleep(0.5)
        p = cgtree.spawn(main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        assert p.wait(120) == 0, "a stale heartbeat must not stop the exec"
        wait_for(lambda: any(e.stop_skipped and e.ppid == p.pid for _, e in rd.items), 20, "skipped-stop event")
        assert lc.stats()["stop_skipped"] == 1 and lc.held() == {}

        def beat():
            while not hung.is_set():
                lc.beat(2.0)
                time.sleep(0.1)
        beater = threading.Thread(target=beat)
        beater.start()
        dog = exec_watchdog.spawn(lc.watchdog_fds())
        p = cgtree.spawn(main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        wait_for(lambda: any(e.stopped and e.ppid == p.pid for _, e in rd.items), 60, "stopped event")
        hung.set()                      # the daemon "hangs" right after the stop
        assert p.wait(120) == 0, "the exec watchdog did not resume the held task"
        assert lc.stats()["released"] == 1 and lc.held() == {}
    finally:
        hung.set()
        if beater is not None:
            beater.join()
        if dog is not None:
            dog.terminate()
            dog.wait(60)
        for _, e in rd.items:
            if e.stopped:
                try:
                    os.kill(e.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        rd.close()
        lc.close()


def test_memwatch_fires_for_a_growing_tool_call(cgtree, cgfs, hog, state, figure):
    cg = cgtree.child("tool")
    cid = cgfs.cgroup_id(cg)
    mw = MemWatch(window_s=0.25)
    rd = Reader(mw, decode_mem)
    try:
        mw.set_limit(cid, threshold_bytes=64 * MiB)
        st = state()
        p = cgtree.spawn(cg, [hog, "alloc", "96", st.path])
        wait_for(lambda: st.value() >= 96, 120, "hog to touch 96 MiB")
        wait_for(lambda: rd.items, 10, "memory-watch event")
        recv, ev = rd.items[0]
        assert ev.cgroup_id == cid and ev.pid == p.pid and MemReason.THRESHOLD in ev.reason
        assert 64 * MiB <= ev.rss_bytes < 80 * MiB
        usage, rss = mw.usage(cid), ProcFS().rss_bytes(p.pid)
        assert abs(usage - rss) < 4 * MiB, (usage, rss)
        # With the memory controller on, the kernel's own count must be at least the anon part.
        assert cgfs.read_int(cg, "memory.current") >= 90 * MiB
        figure("threshold crossing to user space", round((recv - ev.ts_ns) / 1e3), "us")
        assert len([1 for _, e in rd.items if MemReason.THRESHOLD in e.reason]) == 1
    finally:
        rd.close()
        mw.close()


def test_stop_at_exec_places_every_storm_process(figure):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "bench_autodetect", os.path.join(os.path.dirname(__file__), "..", "..", "bench", "autodetect.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # Small: every process start costs ~100x a native one under TCG.
    r = bench.run("stop", tools=3, storm=6, calls=3, sleep_s=2.0)
    assert r["processes"] == 18 and r["fraction"] == 1.0, r
    assert r["errors"] == 0 and r["lost"] == 0
    figure("stop-at-exec hold (median, TCG guest)", round(r["hold_median_us"]), "us")
