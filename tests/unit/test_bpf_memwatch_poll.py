"""PollMemWatch (the user-space stand-in for memwatch.bpf.c) with fake cgroups, procfs and clock."""

from agentd.monitor.events import MemReason
from agentd.monitor.memwatch_poll import PollMemWatch

MiB = 1 << 20


class Fakes:
    def __init__(self):
        self.rss = {1: 0}
        self.now = 0

    def procs(self, cg):
        return list(self.rss)

    def rss_bytes(self, pid):
        return self.rss[pid]


def make():
    f = Fakes()
    got = []
    w = PollMemWatch(f, got.append, window_s=1.0, procfs=f, clock=lambda: f.now)
    return f, w, got


def step(f, w, rss_mib, dt_s=0.1):
    f.now += int(dt_s * 1e9)
    f.rss[1] = rss_mib * MiB
    w.poll()


def test_threshold_is_edge_triggered_and_rearms():
    f, w, got = make()
    w.set_limit(7, threshold_bytes=100 * MiB, path="cg")
    for m in (50, 101, 120, 90, 130):
        step(f, w, m, dt_s=2.0)
    assert [e.rss_bytes // MiB for e in got] == [101, 130]
    assert all(e.reason == MemReason.THRESHOLD for e in got)


def test_rate_fires_once_per_window_for_fast_growth_only():
    f, w, got = make()
    w.set_limit(7, rate_bytes_per_s=100 * MiB, path="cg")
    for m in range(0, 90, 10):          # 100 MiB/s for 0.8 s: below 100 MiB within 1 s
        step(f, w, m)
    assert got == []
    for m in (150, 200, 250):           # +160 MiB within 0.3 s
        step(f, w, m)
    assert len(got) == 1 and got[0].reason == MemReason.RATE and got[0].growth_bytes >= 100 * MiB
    assert w.usage(7) == 250 * MiB
    w.clear(7)
    assert w.usage(7) is None
