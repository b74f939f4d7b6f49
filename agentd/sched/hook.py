"""The daemon hook that gives agents and tool calls their CPU priorities.

Modes (what `modes()["cpu"]` and the metrics report):
  sched_ext   agentd's BPF scheduler runs; agent tasks are moved to SCHED_EXT
  cpu_weight  cgroup v2 cpu.weight per agent and per cgroup inside it
  nice        no cpu controller on cgroup v2: nice values per task
  none        the policy turned CPU priorities off (cpu.scheduler: none)

The policy's `cpu.scheduler` picks: auto (sched_ext where the kernel has it, else the
fallback), sched_ext (same, but a failure to load is a warning every retry), weights
(never load BPF), none. When the kernel ejects the scheduler (watchdog stall, runtime
error) its tasks are already back on the fair class by the kernel's design; the hook
notices within a second, logs the kernel's exit reason, applies the fallback, counts
the ejection and loads a fresh scheduler after a backoff that doubles per ejection.
"""

import asyncio
import logging
import time

from ..errors import AgentdError, BpfError
from ..kernel import sched_ext as kse
from ..kernel.sched_ext import SchedExtSysfs
from ..kernel import bpf_scx_types as contract
from ..kernel.bpf_scx import ScxScheduler, make_config
from .fallback import Fallback
from ..stages import Stage
from .weights import MAIN_LATENCY, CgroupPrio, SlotTable, agent_weight, slices_ns, tool_latency, tool_weight

log = logging.getLogger("agentd.sched")

SCHED_EXT = "sched_ext"
NONE = "none"
WATCH_INTERVAL_S = 1.0
MAX_BACKOFF_S = 300.0
STABLE_S = 300.0            # a scheduler up this long resets the backoff


class CpuScheduler(Stage):
    name = "sched"

    def __init__(self, app, sysfs=None, loader=None, clock=time.monotonic):
        self.app = app
        self.fs = app.fs
        self.caps = app.caps
        self.sysfs = sysfs or SchedExtSysfs()
        self.loader = loader or self._load_scx      # config -> a loaded ScxScheduler
        self.clock = clock
        self.actuator = getattr(getattr(app, "ctl", None), "actuator", None)
        self.fallback = Fallback(self.fs, "cpu" in self.caps.controllers, actuator=self.actuator)
        self.slots = SlotTable()
        self.agent_w = {}           # agent id -> weight
        self.prios = {}             # cgroup path -> CgroupPrio
        self.ids = {}               # cgroup path -> cgroup id
        self.lingering = set()      # ended calls' cgroups that still hold processes
        self.scx = None
        self.mode = NONE
        self.ejections = 0
        self.loads = 0
        self.backoff = None
        self.retry_at = None
        self.last_exit = None
        self.ext_tids = set()
        self.task = None
        self.started = False

    @property
    def policy(self):
        return self.app.policy      # re-read: a reload swaps it

    # --- daemon hooks --------------------------------------------------------------
    async def start(self):
        want = self.policy.cpu.scheduler
        if want == NONE:
            self.mode = NONE
            log.info("CPU priorities off (policy cpu.scheduler: none)")
        elif want in ("auto", SCHED_EXT) and self.caps.sched_ext and getattr(self.actuator, "dry_run", False):
            # Loading a scheduler changes how the whole host schedules: a dry run does not.
            self._enter_fallback()
            log.warning("CPU priorities: dry run: agentd's sched_ext scheduler is not loaded; the cgroup "
                        "weights it would give are logged instead")
        elif want in ("auto", SCHED_EXT) and self.caps.sched_ext:
            self._try_load(first=True)
        else:
            self._enter_fallback()
            why = ("the policy asks for cgroup weights" if want == "weights"
                   else "the kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT unset)")
            log.warning("CPU priorities: %s; using %s", why, self._fallback_words())
        self.started = True
        self._apply_all()
        self.task = asyncio.create_task(self._watch())

    async def stop(self):
        if self.task:
            self.task.cancel()
            self.task = None
        self._unload("agentd is stopping")
        self.started = False

    def modes(self):
        return {"cpu": self.mode}

    def metric_stats(self):
        return {"cpu_scheduler": self.mode, "sched_ext_ejections": self.ejections}

    def status(self):
        out = {"mode": self.mode, "ejections": self.ejections, "loads": self.loads,
               "last_exit": self.last_exit, "cgroups": len(self.prios)}
        if self.retry_at is not None:
            out["retry_in_s"] = round(max(0.0, self.retry_at - self.clock()), 1)
        if self.scx is not None:
            try:
                out["stats"] = self.scx.stats()
            except AgentdError:
                pass
        return out

    def on_agent_start(self, agent):
        slot = self.slots.take(agent.agent_id)
        if slot == 0:
            log.warning("agent %s: more than %d agents; it shares the scheduler's default slot",
                        agent.agent_id, contract.MAX_AGENTS - 1)
        aw = self.agent_w[agent.agent_id] = agent_weight(getattr(agent, "view", None) or self.policy, agent)
        if self.mode == SCHED_EXT:
            self._scx_call(self.scx.set_agent, slot, aw)
        self._add(CgroupPrio(agent.main_cgroup, agent.cgroup, slot, contract.WEIGHT_DFL, MAIN_LATENCY, aw))

    def on_agent_end(self, agent):
        prefix = agent.cgroup + "/"
        for cg in [c for c in self.prios if c.startswith(prefix)]:
            self.lingering.discard(cg)
            self._remove(cg)
        slot = self.slots.release(agent.agent_id)
        self.agent_w.pop(agent.agent_id, None)
        if slot and self.mode == SCHED_EXT:
            self._scx_call(self.scx.clear_agent, slot)

    def on_tool_start(self, agent, tool):
        if agent.agent_id not in self.agent_w:
            self.on_agent_start(agent)
        policy = getattr(agent, "view", None) or self.policy      # the agent's own policy, if it brought one
        prio = CgroupPrio(tool.cgroup, agent.cgroup, self.slots.take(agent.agent_id), tool_weight(policy, tool),
                          tool_latency(tool), self.agent_w[agent.agent_id])
        self._add(prio, tool.cgroup_id)
        if tool.pid:
            # Before the tool execs: everything it starts inherits the policy / nice.
            self._place_tasks(prio, [tool.pid])

    def on_tool_end(self, agent, tool, result):
        # Processes a call left behind (`stragglers: wait`, a dry run) go on running in its
        # cgroup: its entry stays while the kernel's cgroup.events says so. Without it
        # sched_ext would put them in the default slot, outside their agent's weight: an
        # agent of a light class could leave work in the background to run as a default one.
        if self._populated(tool.cgroup):
            self.lingering.add(tool.cgroup)
        else:
            self._remove(tool.cgroup)

    def _populated(self, cg):
        try:
            return self.fs.populated(cg)
        except AgentdError:               # gone (CgroupGone) or unreadable: nothing runs there
            return False

    def _expire_lingering(self):
        for cg in [c for c in self.lingering if not self._populated(c)]:
            self.lingering.discard(cg)
            self._remove(cg)

    # --- entries ------------------------------------------------------------------------
    def _add(self, prio, cgroup_id=None):
        self.prios[prio.cgroup] = prio
        if cgroup_id is None:
            try:
                cgroup_id = self.fs.cgroup_id(prio.cgroup)
            except AgentdError:
                cgroup_id = None
        if cgroup_id is not None:
            self.ids[prio.cgroup] = cgroup_id
        if self.started:
            self._apply(prio)

    def _remove(self, cg):
        self.prios.pop(cg, None)
        cid = self.ids.pop(cg, None)
        if cid is not None and self.mode == SCHED_EXT:
            self._scx_call(self.scx.delete_cgroup, cid)

    def _apply(self, prio):
        if self.mode == SCHED_EXT:
            cid = self.ids.get(prio.cgroup)
            if cid is not None:
                self._scx_call(self.scx.set_cgroup, cid, prio.slot, prio.weight, prio.latency)
        elif self.mode == self.fallback.mode == "cpu_weight":
            self.fallback.apply(prio)

    def _apply_all(self):
        if self.mode == SCHED_EXT:
            for agent_id, slot in self.slots.by_agent.items():
                self._scx_call(self.scx.set_agent, slot, self.agent_w.get(agent_id, contract.WEIGHT_DFL))
        for prio in list(self.prios.values()):
            self._apply(prio)
        self._sweep_tasks()

    def _scx_call(self, fn, *args):
        try:
            fn(*args)
        except AgentdError as err:
            # A map write that fails leaves the cgroup on the default slot: worse
            # priorities, not a broken daemon.
            log.warning("sched_ext map update failed: %s", err)

    # --- tasks --------------------------------------------------------------------------
    def _place_tasks(self, prio, tids):
        if self.mode == SCHED_EXT:
            for tid in tids:
                if tid in self.ext_tids:
                    continue
                try:
                    if kse.set_ext_policy(tid):
                        self.ext_tids.add(tid)
                except AgentdError as err:
                    log.warning("tid %d: cannot move to SCHED_EXT: %s", tid, err)
                    return
        elif self.mode == "nice":
            self.fallback.nice_tasks(prio, tids)

    def _sweep_tasks(self):
        """Give threads that appeared since the last pass (the agent's main process, threads
        of running tools) their policy or nice value; forget threads that are gone."""
        if self.mode not in (SCHED_EXT, "nice"):
            return
        live = set()
        for prio in list(self.prios.values()):
            tids = kse.threads(self.fs, prio.cgroup)
            live.update(tids)
            self._place_tasks(prio, tids)
        self.ext_tids &= live
        self.fallback.forget(live)

    # --- sched_ext lifecycle ----------------------------------------------------------------
    def _config(self):
        return make_config(slices_ns(self.policy.cpu))

    def _load_scx(self, config):
        return ScxScheduler(config, sysfs=self.sysfs).load()

    def _try_load(self, first=False):
        try:
            self.scx = self.loader(self._config())
        except AgentdError as err:
            self.scx = None
            self._enter_fallback()
            self._schedule_retry()
            log.warning("CPU priorities: cannot load the sched_ext scheduler (%s); using %s, retry in %.0f s",
                        err, self._fallback_words(), self.backoff)
            return False
        self.loads += 1
        self.mode = SCHED_EXT
        self.retry_at = None
        self.ext_tids.clear()
        log.info("sched_ext scheduler %s: agent tasks run under SCHED_EXT (partial switch)",
                 "loaded" if first else "reloaded")
        self.app.events.emit("sched_ext_loaded", retry=not first)
        return True

    def _enter_fallback(self):
        self.mode = self.fallback.mode
        self.fallback.niced.clear()
        if self.started:
            for prio in list(self.prios.values()):
                self._apply(prio)
            self._sweep_tasks()

    def _schedule_retry(self):
        base = float(self.policy.cpu.retry_backoff_s)
        self.backoff = base if self.backoff is None else min(self.backoff * 2, MAX_BACKOFF_S)
        self.retry_at = self.clock() + self.backoff

    def _unload(self, why):
        scx, self.scx = self.scx, None
        if scx is None:
            return
        try:
            scx.close()
            log.info("sched_ext scheduler unloaded (%s)", why)
        except AgentdError as err:
            log.warning("unloading the sched_ext scheduler: %s", err)

    def check(self):
        """One watch pass: ejection, retry, ended calls' cgroups that emptied, new threads.
        Called every WATCH_INTERVAL_S."""
        self._expire_lingering()
        if self.mode == SCHED_EXT:
            if self.scx is not None and self.scx.running():
                if self.scx.loaded_at and self.clock() - self.scx.loaded_at > STABLE_S:
                    self.backoff = None
                self._sweep_tasks()
                return
            self._on_ejected()
        elif self.retry_at is not None and self.clock() >= self.retry_at:
            if self._try_load():
                self._apply_all()
            return
        self._sweep_tasks()

    def _on_ejected(self):
        scx = self.scx
        reason = None
        try:
            reason = scx.exit_reason() if scx is not None else None
        except BpfError:
            pass
        reason = reason or f"kernel sched_ext state {self.sysfs.state()!r}"
        self.ejections += 1
        self.last_exit = reason
        self._unload("ejected")
        self._enter_fallback()
        self._schedule_retry()
        log.error("sched_ext scheduler ejected by the kernel: %s; tasks are back on the default scheduler, "
                  "CPU priorities use %s; reloading in %.0f s", reason, self._fallback_words(), self.backoff)
        self.app.events.emit("sched_ext_ejected", reason=reason, fallback=self.mode, retry_in_s=self.backoff)

    async def _watch(self):
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                self.check()
            except Exception:
                log.exception("CPU scheduler watch failed")

    def _fallback_words(self):
        return ("cgroup cpu.weight" if self.fallback.mode == "cpu_weight"
                else "nice values (no cpu controller on cgroup v2)")
