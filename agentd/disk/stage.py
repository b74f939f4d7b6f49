"""The disk stage: each agent's and tool call's io.weight / io.max from its class.

An agent's limits are written when it starts (its cgroup holds all its processes, so its
maxima bound its calls too); a call's come in its Share, written with its other limits
before its first process runs. The disks `io.devices` names are resolved once per policy
(a reload that names others resolves again), never on a call's path.

Weights count only on a disk where iocost or bfq shares by weight (kernel/blkio.py). On
each named disk that has neither, agentd turns iocost on (`io.enable_iocost`, the
kernel's automatic cost model) and off again when it stops, as the network stage gives a
device its qdisc back; a disk someone else set up is left as it is.
"""

import logging

from ..errors import AgentdError, CgroupGone, KernelError
from ..kernel import blkio
from ..pipeline import Share
from ..stages import Stage
from .plan import io_files

log = logging.getLogger("agentd.disk")


class IoStage(Stage):
    name = "io"

    def __init__(self, app, resolve=blkio.resolve, sys_dev_block=blkio.SYS_DEV_BLOCK):
        self.app = app
        self.fs = app.fs
        self.actuator = app.ctl.actuator
        self.resolve = resolve
        self.sys_dev_block = sys_dev_block
        self.dry_run = bool(getattr(app, "dry_run", False))
        self._specs = None
        self.devices = []
        self.names = {}               # dev -> the io.devices entries that name it (per-disk maxima)
        self.iocost_on = []           # disks agentd turned iocost on for (turned off at stop)
        self.weight_modes = {}        # dev -> iocost | bfq | none
        self._devices()

    # --- disks -------------------------------------------------------------------
    def _devices(self):
        """The named disks, resolved again only when the policy names others. What this
        trusts: the administrator's policy, and paths in it that only root can redirect
        (kernel/blkio.py refuses the rest); an agent's own policy may not name disks."""
        specs = tuple(self.app.policy.io.devices)
        if specs == self._specs:
            return self.devices
        self._specs = specs
        found, names = {}, {}
        for spec in specs:
            try:
                d = self.resolve(spec)
            except AgentdError as err:
                # Checked at load; a disk can still go (a loop device detached) after.
                log.warning("io.devices %s: %s; its io maxima are not written", spec, err)
                continue
            found.setdefault(d.dev, d)        # two paths on one disk: one disk
            names.setdefault(d.dev, []).append(spec)
        self.devices = sorted(found.values(), key=lambda d: (d.major, d.minor))
        self.names = {dev: tuple(n) for dev, n in names.items()}
        self._weights_count()
        return self.devices

    def _weights_count(self):
        """Where a named disk shares by no weight, turn iocost on for it (once)."""
        for d in self.devices:
            mode = blkio.weight_mode(self.fs, d.dev, self.sys_dev_block)
            if mode == "none" and self.app.policy.io.enable_iocost and d.dev not in self.iocost_on:
                if self.dry_run:
                    log.info("io: would turn iocost on for %s (%s) [dry run]", d.name, d.dev)
                else:
                    try:
                        blkio.set_iocost(self.fs, d.dev, True)
                        self.iocost_on.append(d.dev)
                        mode = "iocost"
                        log.info("io: iocost turned on for %s (%s): io.weight shares it", d.name, d.dev)
                    except KernelError as err:
                        log.warning("io: %s; io.weight does not count on %s", err, d.name)
            elif mode == "none":
                log.warning("io: %s (%s) shares by no weight (no iocost, no bfq) and io.enable_iocost is false: "
                            "io.weight does not count there", d.name, d.dev)
            self.weight_modes[d.dev] = mode

    # --- what the policy says ------------------------------------------------------
    def _policy(self, agent):
        return getattr(agent, "view", None) or self.app.policy

    def agent_files(self, agent):
        try:
            cls = self._policy(agent).agent_class(agent.agent_class)
        except AgentdError:
            return {}             # a class the policy no longer has (a reload)
        return io_files(cls.io, self._devices(), self.names)

    def tool_files(self, agent, plan):
        try:
            cls = self._policy(agent).tool_class(plan.tool_class)
        except AgentdError:
            return {}
        return io_files(cls.io, self._devices(), self.names)

    # --- stage hooks -----------------------------------------------------------------
    def on_agent_start(self, agent):
        files = self.agent_files(agent)
        if not files:
            return
        try:
            applied = self.actuator.set_limits(f"agent {agent.agent_id}", agent.cgroup, files,
                                               f"class {agent.agent_class}", agent=agent.agent_id)
        except CgroupGone:
            return
        if agent.limits_applied is not None:
            agent.limits_applied.update(applied)

    def place(self, call, decided):
        files = self.tool_files(call.agent, call.plan)
        return Share(limits=files) if files else None

    def observe(self, call):
        return self.place(call, None)

    async def stop(self):
        self.close()

    def close(self):
        """Disks agentd turned iocost on for get it off again: as the host had them."""
        for dev in self.iocost_on:
            try:
                blkio.set_iocost(self.fs, dev, False)
            except KernelError as err:
                log.warning("io: %s", err)
        self.iocost_on = []

    # --- reporting ---------------------------------------------------------------------
    def modes(self):
        ms = set(self.weight_modes.values())
        return {"io": ms.pop() if len(ms) == 1 else ("mixed" if ms else "weights")}

    def mode_details(self):
        return {"io": {"devices": {d.dev: {"name": d.name, "spec": d.spec, "weight": self.weight_modes.get(d.dev)}
                                   for d in self.devices},
                       "iocost_turned_on": list(self.iocost_on)}}

    def metric_stats(self):
        """Per running agent: bytes and operations read and written (its io.stat, all disks)."""
        per = {}
        for agent in list(self.app.ctl.agents.values()):
            try:
                text = self.fs.read_if_offered(agent.cgroup, blkio.IO_STAT)
            except AgentdError:
                continue
            if text is not None:
                per[agent.agent_id] = blkio.stat_totals(text)
        return {"disk_io": per}
