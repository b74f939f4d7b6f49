"""The process-lifecycle program (bpf/lifecycle.bpf.c): load, scope, attach, read.

Two attach flavours: `tp_btf` (typed tracepoint args, needs kernel BTF, 5.5+) and
classic `tracepoint` (needs tracefs mounted). "auto" tries tp_btf and falls back.
"""

import ctypes
import time

from ..errors import BpfError
from . import bpf_types as T
from . import libbpf
from .bpf_objects import LoadedProgram, object_path

FLAVOURS = {
    "tp_btf": ("agentd_fork_btf", "agentd_exec_btf", "agentd_exit_btf"),
    "tracepoint": ("agentd_fork_tp", "agentd_exec_tp", "agentd_exit_tp"),
}


class Lifecycle(LoadedProgram):
    """Loaded and attached lifecycle program. close() detaches and frees everything."""

    def __init__(self, flavour="auto", report_all=False, batch_bytes=0, path=None):
        """batch_bytes > 0: wake the ring-buffer reader only when that much is waiting
        (or at once for a task stopped at exec); the reader must then also drain on a
        timer. Saves one wake-up (an IPI) per event; see bench/forkexec.py."""
        self.path = path or object_path("lifecycle")
        self.fallback_reason = None
        order = ["tp_btf", "tracepoint"] if flavour == "auto" else [flavour]
        errors = []
        for fl in order:
            try:
                self._obj = self._open(fl, report_all, batch_bytes)
                self.flavour = fl
                break
            except BpfError as err:
                hint = ""
                if fl == "tracepoint" and "perf event ID" in str(err):
                    hint = "\n(classic tracepoints need tracefs: mount -t tracefs nodev /sys/kernel/tracing)"
                errors.append(f"{fl}: {err}{hint}")
        else:
            raise BpfError("lifecycle program could not be loaded and attached:\n" + "\n".join(errors))
        if errors:
            self.fallback_reason = errors[0]
        self._watched = self._obj.map("watched_cgroups")
        self._heartbeat = self._obj.map("heartbeat")
        self._held = self._obj.map("held")
        self._shells = self._obj.map("shells")
        self.max_age_ns = 0

    # --- dead-man switch --------------------------------------------------
    def beat(self, max_age_s=None):
        """Tell the program the daemon is alive (now). `max_age_s`: stop tasks at exec only
        while the last beat is at most this old (None keeps the current bound; 0: always)."""
        if max_age_s is not None:
            self.max_age_ns = int(max_age_s * 1e9)
        hb = T.agentd_heartbeat(beat_ns=time.monotonic_ns(), max_age_ns=self.max_age_ns)
        self._heartbeat.update(ctypes.c_uint32(0), hb)

    def release(self, pid):
        """Forget `pid` in `held` once user space has resumed it (False if absent)."""
        return self._held.delete(ctypes.c_uint32(pid))

    def held(self):
        """{pid: agentd_held} of tasks stopped at exec and not released yet."""
        out = {}
        for k in self._held.keys(ctypes.c_uint32):
            v = T.agentd_held()
            if self._held.lookup(k, v):
                out[k.value] = v
        return out

    # --- persistent shells (agentd/monitor/shells.py) ------------------------
    def add_shell(self, pid, starttime):
        """Report `pid`'s children at exec without stopping them (a job-control shell would
        see the stop); `starttime`: /proc/PID/stat field 22, so a reused pid is not it."""
        self._shells.update(ctypes.c_uint32(pid), ctypes.c_uint64(starttime))

    def remove_shell(self, pid):
        return self._shells.delete(ctypes.c_uint32(pid))

    def watchdog_fds(self):
        """The map descriptors the exec watchdog needs (kernel.exec_watchdog)."""
        return {"held": self._held.fd, "heartbeat": self._heartbeat.fd, "stats": self._obj.map("stats").fd}

    def _open(self, flavour, report_all, batch_bytes):
        obj = libbpf.Object(self.path)
        try:
            for fl, progs in FLAVOURS.items():
                for p in progs:
                    obj.set_autoload(p, fl == flavour)
            obj.set_rodata(T.agentd_lifecycle_config(report_all=int(bool(report_all)),
                                                     batch_bytes=int(batch_bytes)))
            obj.load()
            for p in FLAVOURS[flavour]:
                obj.attach(p)
        except BaseException:
            obj.close()
            raise
        return obj

    # --- scope ------------------------------------------------------------
    def watch(self, cgroup_id, flags=T.AGENTD_WATCH_TREE):
        """Report processes of `cgroup_id` (and, with WATCH_TREE, of its descendants)."""
        self._watched.update(ctypes.c_uint64(cgroup_id), ctypes.c_uint32(flags))

    def unwatch(self, cgroup_id):
        return self._watched.delete(ctypes.c_uint64(cgroup_id))

    def watched(self):
        out = {}
        for k in self._watched.keys(ctypes.c_uint64):
            v = ctypes.c_uint32()
            if self._watched.lookup(k, v):
                out[k.value] = v.value
        return out

