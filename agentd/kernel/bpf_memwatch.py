"""The memory-watch program (bpf/memwatch.bpf.c): per-cgroup rss accounting + thresholds."""

import ctypes

from . import bpf_types as T
from . import libbpf
from .bpf_objects import LoadedProgram, object_path

PROGRAM = "agentd_rss_btf"


class MemWatch(LoadedProgram):
    EVENTS_MAP = "mem_events"

    """Loaded and attached memory-watch program. close() detaches and frees everything.

    window_s is the growth-rate window: a cgroup whose usage grows by more than
    rate_bytes_per_s * window_s within one window gets an OVER_RATE event.
    """

    def __init__(self, window_s=0.25, page_size=4096, path=None):
        self.path = path or object_path("memwatch")
        self.window_s = window_s
        obj = libbpf.Object(self.path)
        try:
            obj.set_rodata(T.agentd_memwatch_config(window_ns=int(window_s * 1e9),
                                                    page_shift=page_size.bit_length() - 1))
            obj.load()
            obj.attach(PROGRAM)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self._limits = obj.map("mem_limits")
        self._state = obj.map("mem_state")

    def set_limit(self, cgroup_id, threshold_bytes=0, rate_bytes_per_s=0, path=None):
        """Track `cgroup_id` and report crossings; 0 disables a check (tracking stays on).

        `path` is unused here (the program knows cgroups by id); the polling stand-in
        needs it, so callers pass it to both.
        """
        self._limits.update(ctypes.c_uint64(cgroup_id),
                            T.agentd_mem_limit(int(threshold_bytes), int(rate_bytes_per_s)))

    def clear(self, cgroup_id):
        """Stop tracking `cgroup_id` (call when its cgroup is removed)."""
        key = ctypes.c_uint64(cgroup_id)
        self._limits.delete(key)
        self._state.delete(key)

    def usage(self, cgroup_id):
        """Summed rss of the cgroup's processes as the program sees it; None if untracked."""
        st = T.agentd_mem_state()
        if not self._state.lookup(ctypes.c_uint64(cgroup_id), st):
            return None
        return max(st.rss_bytes, 0)
