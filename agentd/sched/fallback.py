"""CPU priorities without sched_ext: cpu.weight per cgroup, else nice per task.

cgroup v2's cpu controller gives the same two levels the scheduler has (agent, then
its cgroups), so the weights carry over as they are. Hosts whose cgroup v2 tree has no
cpu controller (it is bound to v1) only have nice: the flattened weight (agent x tool
call) becomes a nice value on each task, never below 0.
"""

import logging

from ..errors import AgentdError, CgroupGone, KernelError
from ..kernel import cgroupfs as cgf
from ..kernel import sched_ext as kse
from .weights import nice_for_weight

log = logging.getLogger("agentd.sched")

CPU_WEIGHT = "cpu_weight"
NICE = "nice"


class Fallback:
    def __init__(self, fs, has_cpu_controller, actuator=None):
        self.fs = fs
        self.actuator = actuator      # cpu.weight goes through it (dry run: decided, not written)
        self.mode = CPU_WEIGHT if has_cpu_controller else NICE
        self.niced = {}         # tid -> nice agentd set (so a pass skips them)
        self.writes = 0

    def set_weight(self, cg, weight, why):
        """Write cpu.weight of `cg` (cpu_weight mode); old -> new is logged."""
        if self.mode != CPU_WEIGHT:
            return False
        try:
            if not self.fs.has(cg, cgf.CPU_WEIGHT):
                return False
            new = str(int(weight))
            if self.actuator is not None:
                old = self.actuator.read(cg, cgf.CPU_WEIGHT)
                if old != new:
                    self.actuator.set_limits(cg, cg, {cgf.CPU_WEIGHT: new}, why)
                    self.writes += not self.actuator.dry_run
                return True
            old = self.fs.read(cg, cgf.CPU_WEIGHT).strip()
            if old != new:
                self.fs.write(cg, cgf.CPU_WEIGHT, new)
                self.writes += 1
                log.info("%s: cpu.weight %s -> %s (%s)", cg, old, new, why)
            return True
        except CgroupGone:
            return False
        except KernelError as err:
            log.warning("%s: cannot set cpu.weight=%s: %s", cg, weight, err)
            return False

    def apply(self, prio):
        """Weights of one cgroup and of its agent (cpu_weight mode)."""
        self.set_weight(prio.agent_cgroup, prio.agent_weight, "agent weight")
        self.set_weight(prio.cgroup, prio.weight, f"{prio.latency} weight")

    def nice_tasks(self, prio, tids):
        """Give the tasks of `prio.cgroup` the nice value of its flattened weight (nice mode)."""
        if self.mode != NICE:
            return 0
        nice = nice_for_weight(prio.effective_weight)
        done = 0
        if self.actuator is not None and self.actuator.dry_run:
            return 0              # a dry run renices nothing (cpu.weight decisions are logged)
        for tid in tids:
            if self.niced.get(tid) == nice:
                continue
            try:
                if kse.set_nice(tid, nice):
                    self.niced[tid] = nice
                    done += 1
            except AgentdError as err:
                log.warning("tid %d: cannot set nice %d: %s", tid, nice, err)
        return done

    def forget(self, live_tids):
        """Drop remembered tids that no longer exist (bounded memory)."""
        for tid in list(self.niced):
            if tid not in live_tids:
                del self.niced[tid]

