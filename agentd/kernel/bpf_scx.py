"""Load, feed and unload agentd's sched_ext scheduler (bpf/scx_agentd.bpf.c).

Lifecycle: open the object -> write the config into .rodata -> mark init sleepable ->
load (verifier, CO-RE against the running kernel) -> register the struct_ops map through
a BPF link (the kernel switches SCHED_EXT tasks to it; /sys/kernel/sched_ext/state becomes
enabled; the link dies with the process, so a daemon killed by SIGKILL or a watchdog's
SIGABRT leaves no scheduler behind for its successor to find)
-> write agent and cgroup entries as agents and tool calls come and go -> unregister
-> close. After the kernel ejects the scheduler (error, stall) the object is only good
for reading why (exit_info): the caller closes it and loads a fresh one to retry.
"""

import ctypes as _c
import logging
import os
import time

from ..errors import BpfError
from . import bpf_objects, libbpf, libbpf_structops
from . import bpf_scx_types as contract
from .sched_ext import SchedExtSysfs

log = logging.getLogger("agentd.sched")      # the CPU stage's log: this is its loader

OBJECT = "scx_agentd.bpf.o"
OPS_MAP = "agentd_ops"
OPS_NAME = "agentd"
SLEEPABLE = ("agentd_init",)


def object_path():
    """agentd/_bpf/scx_agentd.bpf.o, or the one in AGENTD_BPF_DIR (as for every agentd program)."""
    return bpf_objects.object_path(OBJECT[:-len(".bpf.o")])


def make_config(slices_ns, nr_cpus=None, wake_lag_ns=20_000_000, preempt=True):
    cfg = contract.Config()
    for i, ns in enumerate(slices_ns):
        cfg.slice_ns[i] = int(ns)
    cfg.wake_lag_ns = int(wake_lag_ns)
    cfg.nr_cpus = min(contract.MAX_CPUS, nr_cpus or os.cpu_count() or 1)
    cfg.preempt = 1 if preempt else 0
    return cfg


class ScxScheduler:
    """One loaded instance of the scheduler. Not thread-safe; the daemon's loop owns it."""

    def __init__(self, config, path=None, sysfs=None):
        self.config = config
        self.path = path or object_path()
        self.sysfs = sysfs or SchedExtSysfs()
        self.obj = None
        self.link = None
        self.loaded_at = None

    # --- lifecycle ------------------------------------------------------------------
    def load(self, timeout=10.0):
        """Open, load and register; returns once the kernel reports it enabled."""
        state = self.sysfs.state()
        if state is None:
            raise BpfError("sched_ext is not available in this kernel (no /sys/kernel/sched_ext)")
        if state != "disabled":
            other = self.sysfs.ops_name() or "another scheduler"
            raise BpfError(f"a sched_ext scheduler is already loaded ({other}, state {state}); "
                           "only one can run at a time")
        obj = libbpf.Object(self.path)
        try:
            obj.set_rodata(self.config)
            for prog in SLEEPABLE:
                libbpf_structops.set_sleepable(obj, prog)
            libbpf_structops.use_link(obj, OPS_MAP)
            obj.load()
            self.obj = obj
            self.link = libbpf_structops.attach_struct_ops(obj, OPS_MAP)
        except BaseException:
            self.obj = self.link = None
            obj.close()
            raise
        deadline = time.monotonic() + timeout
        while self.sysfs.state() != "enabled":
            if self.exited() or time.monotonic() > deadline:
                why = self.exit_reason() or f"state {self.sysfs.state()}"
                self.close()
                raise BpfError(f"sched_ext scheduler did not start: {why}")
            time.sleep(0.01)
        self.loaded_at = time.monotonic()
        return self

    def close(self):
        """Unregister (tasks go back to the fair class) and release the object."""
        obj, self.obj, self.link = self.obj, None, None
        if obj is not None:
            obj.close()

    # --- health ---------------------------------------------------------------------
    def exit_info(self):
        info = contract.ExitInfo()
        if self.obj is None:
            return None
        self.obj.map("exit_info").lookup(_c.c_uint32(0), info)
        return info

    def exited(self):
        """True once the kernel called ops.exit: ejected, or unloaded."""
        info = self.exit_info()
        return info is not None and info.kind != 0

    def exit_reason(self):
        info = self.exit_info()
        return info.describe() if info is not None and info.kind != 0 else None

    def running(self):
        """Loaded, not exited, and the kernel runs it."""
        return (self.obj is not None and not self.exited() and self.sysfs.state() == "enabled"
                and self.sysfs.ops_name() in (None, OPS_NAME))

    # --- maps -----------------------------------------------------------------------
    def set_agent(self, slot, weight):
        self.obj.map("agents").update(_c.c_uint32(slot), contract.AgentEntry(weight=int(weight)))

    def clear_agent(self, slot):
        self.obj.map("agents").update(_c.c_uint32(slot), contract.AgentEntry(weight=0))

    def set_cgroup(self, cgroup_id, slot, weight, latency):
        """Add or replace a cgroup's entry; a new entry starts with vtime 0 (the scheduler
        lifts it to its agent's current virtual time when its first task queues)."""
        m = self.obj.map("cgroups")
        key = _c.c_uint64(cgroup_id)
        value = contract.CgroupEntry()
        if m.lookup(key, value):     # keep the scheduler-owned vtime of an existing entry
            pass
        value.slot, value.weight = int(slot), int(weight)
        value.latency = contract.LATENCY[latency]
        m.update(key, value)

    def delete_cgroup(self, cgroup_id):
        return self.obj.map("cgroups").delete(_c.c_uint64(cgroup_id))

    def cgroup(self, cgroup_id):
        """The entry of `cgroup_id`, or None."""
        value = contract.CgroupEntry()
        return value if self.obj.map("cgroups").lookup(_c.c_uint64(cgroup_id), value) else None

    def cgroup_ids(self):
        return [k.value for k in self.obj.map("cgroups").keys(_c.c_uint64)]

    def stats(self):
        m = self.obj.map("stats")
        out = {}
        for i, name in enumerate(contract.STATS):
            v = _c.c_uint64()
            m.lookup(_c.c_uint32(i), v)
            out[name] = v.value
        return out
