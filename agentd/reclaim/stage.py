"""The reclaim stage: each tick, every idle agent's own cgroup gives back a step of its
memory (pacer.py decides; the actuator writes memory.reclaim, dry run honoured)."""

import logging

from ..errors import AgentdError, CgroupGone, FeatureMissing
from ..kernel import cgroupfs as cgf
from ..kernel import psi
from ..kernel import swap as ksw
from ..stages import Stage, require_offered
from ..units import format_size
from .pacer import AgentPace, step_bytes

log = logging.getLogger("agentd.reclaim")


class ReclaimStage(Stage):
    name = "reclaim"

    def __init__(self, app, actuator, swap_free_fn=ksw.swap_free):
        self.app = app
        self.swap_free_fn = swap_free_fn
        self.idle = {}                # agent id -> bytes of its own memory reclaim may still take
        self.swap_free = 0            # the host's free swap at the latest tick
        self.fs = app.fs
        self.ctl = app.ctl
        self.actuator = actuator
        self.paces = {}               # agent id -> AgentPace
        self.reclaimed_total = 0      # bytes memory.current fell by across reclaim writes
        self.steps_total = 0

    @classmethod
    def for_app(cls, app):
        if not app.policy.reclaim.enabled:
            raise FeatureMissing("turned off in the policy (reclaim.enabled: false)")
        require_offered(app, cgf.MEMORY_RECLAIM, "no memory controller there, or a kernel before 5.19")
        return cls(app, app.ctl.actuator)

    @property
    def cfg(self):
        return self.app.policy.reclaim    # re-read: a reload swaps the policy

    def modes(self):
        return {"reclaim": "dry-run" if self.actuator.dry_run else "on"}

    def metric_stats(self):
        return {"reclaimed_bytes": self.reclaimed_total, "reclaim_steps": self.steps_total}

    def on_agent_start(self, agent):
        self.paces[agent.agent_id] = AgentPace()

    def on_agent_end(self, agent):
        self.paces.pop(agent.agent_id, None)
        self.idle.pop(agent.agent_id, None)

    def reclaimable(self):
        """Bytes idle agents hold that the kernel can still move to swap: room admission
        and the ladder may count on (agentd reclaims it in steps, and at a limit the
        kernel's own reclaim takes it, since agents may swap and tool calls may not).
        From the latest tick's readings; 0 without free swap."""
        return min(sum(self.idle.values()), self.swap_free)

    def on_tool_start(self, agent, tool):
        pace = self.paces.setdefault(agent.agent_id, AgentPace())
        pace.idle_since = None
        self.idle.pop(agent.agent_id, None)
        if pace.spell:
            log.info("agent %s: %s reclaimed while it waited", agent.agent_id, format_size(pace.spell))
            pace.spell = 0

    def on_sample(self, snapshot):
        try:
            self.tick(snapshot.mono)
        except Exception:
            log.exception("reclaim tick failed")

    def tick(self, now):
        cfg = self.cfg
        for agent in list(self.ctl.agents.values()):
            pace = self.paces.setdefault(agent.agent_id, AgentPace(idle_since=now))
            if any(not t.done for t in agent.tools.values()):
                pace.idle_since = None
                self.idle.pop(agent.agent_id, None)
                continue
            if pace.idle_since is None:
                pace.idle_since = now
            if now + cfg.interval_s < pace.hold_until:
                # Backed off (it faulted its memory back, or the kernel had nothing more to
                # take): nothing of it counts as reclaimable and nothing is read until one
                # interval before the hold ends, where the reading is taken that the
                # pressure check after the hold compares against. Two reads per agent per
                # tick saved for most of an idle agent's wait.
                self.idle[agent.agent_id] = 0
                continue
            # What this trusts: the path of the agent's own cgroup, which the daemon made and
            # no agent can rename (cgroup directories are root's), and the kernel's
            # memory.current and memory.pressure of it; nothing the agent says. Only that
            # cgroup is reclaimed: never a tool call's, never anything outside the agent.
            main = agent.main_cgroup
            try:
                current = self.fs.read_int(main, cgf.MEMORY_CURRENT)
                stall = psi.total_us(self.fs.path(main, cgf.MEMORY_PRESSURE))
            except CgroupGone:
                continue
            except AgentdError as err:
                log.debug("agent %s: no reclaim reading: %s", agent.agent_id, err)
                continue
            want = step_bytes(cfg, now, pace, current, stall)
            # What is left above the floor may go, unless the agent showed it as its
            # working set (pressure backed the stage off).
            self.idle[agent.agent_id] = 0 if now < pace.hold_until else max(0, (current or 0) - (cfg.floor or 0))
            if not want:
                continue
            try:
                before, after, full = self.actuator.reclaim(f"agent {agent.agent_id}", main, want,
                                                            f"idle {now - pace.idle_since:.1f} s")
            except CgroupGone:
                continue
            except AgentdError as err:
                log.debug("agent %s: reclaim failed: %s", agent.agent_id, err)
                pace.hold_until = now + cfg.backoff_s
                continue
            self.steps_total += 1
            got = max(0, before - after)
            self.reclaimed_total += got
            pace.spell += got
            if not full:
                # The kernel found nothing more it may take (anonymous memory without swap
                # room, or all of it already out): wait before asking again.
                pace.hold_until = now + cfg.backoff_s
        self._read_swap_free()

    def _read_swap_free(self):
        """The host's free swap, read only where some idle agent holds memory it could take
        (reclaimable() is the smaller of the two: with none, it is 0 whatever swap is free)."""
        if not any(self.idle.values()):
            return
        try:
            self.swap_free = self.swap_free_fn()
        except AgentdError:
            self.swap_free = 0
