"""User-space stand-in for bpf/memwatch.bpf.c: same thresholds, same MemEvents, by polling.

Usage is the summed rss of the cgroup's processes (/proc/<pid>/statm), the quantity the
BPF program keeps, so both modes report the same numbers; it lags by the poll interval.
"""

import time
from collections import deque

from ..errors import CgroupGone, ProcessGone
from ..kernel.bpf_userspace import ProcFS
from .events import MemEvent, MemReason


class PollMemWatch:
    def __init__(self, cgroups, callback, window_s=0.25, procfs=None, clock=time.monotonic_ns):
        self.cgroups = cgroups
        self.callback = callback
        self.window_ns = int(window_s * 1e9)
        self.procfs = procfs or ProcFS()
        self.clock = clock
        self._limits = {}     # cgroup id -> [path, threshold, rate, over, last_rate_ns, deque[(t, bytes)]]

    def set_limit(self, cgroup_id, threshold_bytes=0, rate_bytes_per_s=0, path=None):
        cur = self._limits.get(cgroup_id)
        if cur is None:
            if path is None:
                raise ValueError("polling memory watch needs the cgroup path")
            self._limits[cgroup_id] = [path, threshold_bytes, rate_bytes_per_s, False, 0, deque()]
        else:
            cur[1], cur[2] = threshold_bytes, rate_bytes_per_s

    def clear(self, cgroup_id):
        self._limits.pop(cgroup_id, None)

    def _sample(self, path):
        total = 0
        for pid in self.cgroups.procs(path):
            try:
                total += self.procfs.rss_bytes(pid)
            except ProcessGone:
                continue
        return total

    def usage(self, cgroup_id):
        ent = self._limits.get(cgroup_id)
        return ent[5][-1][1] if ent and ent[5] else None

    def poll(self):
        """Sample every watched cgroup once; call at the poll interval."""
        for cgid, ent in list(self._limits.items()):
            path, threshold, rate, over, last_rate, hist = ent
            try:
                rss = self._sample(path)
            except CgroupGone:
                self._limits.pop(cgid, None)
                continue
            now = self.clock()
            hist.append((now, rss))
            while hist and now - hist[0][0] > self.window_ns:
                hist.popleft()
            reason = MemReason(0)
            if threshold:
                if rss >= threshold and not over:
                    reason |= MemReason.THRESHOLD
                ent[3] = rss >= threshold
            growth = rss - min(b for _, b in hist)
            if rate and growth >= rate * self.window_ns / 1e9 and now - last_rate >= self.window_ns:
                reason |= MemReason.RATE
                ent[4] = now
            if reason:
                self.callback(MemEvent(cgroup_id=cgid, reason=reason, rss_bytes=rss, threshold_bytes=threshold,
                                       rate_bytes_per_s=rate, growth_bytes=growth,
                                       window_ns=now - hist[0][0], pid=0, ts_ns=now))
