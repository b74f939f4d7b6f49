"""A tool call's life in the controller: start (apply its Placement), observe (a dry
run's), attach, re-classify on exec, sample, finish (stragglers, accounting, the result)
and the sweep of calls that ended without a report.

A mixin of the Controller (controller.py), which owns the tree, the agents and the state
journal these methods use.
"""

import dataclasses
import logging
import time

from . import names
from .clip import clip_argv
from .errors import AgentdError, CgroupGone, KernelError, ProcessGone
from .kernel import cgroupfs as cgf
from .model import ToolCall
from .pipeline import Call
from .units import format_size

log = logging.getLogger("agentd.controller")


class ToolCalls:
    def start_tool(self, agent, proc, argv, declared_class=None, mem=None, intent=None, origin="launcher",
                   ticket=None):
        """Create a tool-call cgroup in `agent`, apply its limits and move `proc` into it.

        `proc`: a kernel.pidfd.Proc (checked again immediately before the move and the
        oom_score_adj write: a pid that names another process by then is refused), a
        bare pid (fakes in unit tests), or None. `ticket`: what the pipeline's admit
        decided (the API path); without one the stages decide now (automatic detection).

        `pid` must not have exec'd the tool yet (the launcher's child waits for our reply;
        the automatic path holds it stopped), so everything it forks lands inside.
        With `pid=None` the cgroup is made empty: the launcher then starts the tool
        directly inside it with clone3(CLONE_INTO_CGROUP), which costs no migration
        (a write to cgroup.procs waits for an RCU grace period, ~10 ms on a busy host),
        or falls back to `attach()`.
        """
        pid = _pid(proc)
        # Planned once: by the pipeline's admit (the API path, `ticket`), else here.
        plan = ticket.plan if ticket is not None else self.pipeline.plan(agent, argv, declared_class, mem)
        names.check_name(plan.tool_class, "tool class")
        seq = agent.next_seq
        agent.next_seq += 1
        tool_id = f"{seq:04d}-{plan.tool_class}"
        cg = f"{agent.tools_cgroup}/{tool_id}"
        argv = clip_argv(argv)
        self.fs.mkdir(cg, exist_ok=False)
        try:
            call = Call(agent, tuple(argv), plan, pid, mem is not None, key=f"{agent.agent_id}/{tool_id}", cgroup=cg)
            placement = self.pipeline.place(call, ticket)
            tool = ToolCall(agent_id=agent.agent_id, tool_id=tool_id, cgroup=cg, argv=argv, plan=plan,
                            origin=origin, intent=intent, pid=pid, forecast=placement.forecast,
                            actions=list(placement.actions), offload_cpu_weight=placement.offload_cpu_weight,
                            placement=placement)
            fc = placement.forecast
            reason = f"class {plan.tool_class}" + (f", rule {plan.rule}" if plan.rule else "") + (
                f", forecast {format_size(fc.peak_bytes)} ({fc.source}, confidence {fc.confidence:.2f})"
                if fc is not None else "")
            tool.run.limits_applied = self._apply(cg, placement.limits, f"tool {tool.key}", reason,
                                              fresh=True, agent=agent.agent_id, tool=tool_id)
            self._kill_whole(cg, f"tool {tool.key}")
            tool.run.cgroup_id = self.fs.cgroup_id(cg)
            if pid is not None:
                _verify(proc)
                self.fs.move(cg, pid)
                self._set_oom(proc, self.tool_oom_adj(agent, tool), f"tool {tool.key}", agent=agent.agent_id,
                              tool=tool_id)
        except (AgentdError, OSError):
            self.fs.rmdir(cg)
            raise
        agent.tools[tool_id] = tool
        c = self.counters["tool_started"]
        c[plan.tool_class] = c.get(plan.tool_class, 0) + 1
        self._save(agent=agent, tool=tool)
        self.events.emit("tool_start", agent=agent.agent_id, tool=tool_id, argv=tool.argv[:64],
                         tool_class=plan.tool_class, rule=plan.rule, origin=origin, intent=intent,
                         limits=tool.limits_applied, **self._dry())
        self._each("on_tool_start", lambda h: h.on_tool_start(agent, tool))
        return tool

    def observe_tool(self, agent, pid, argv, origin="auto"):
        """A dry run's automatically detected tool call: not placed, not stopped, nothing
        written. What it would have been (class, rule, limits, forecast, oom_score_adj) is
        logged and emitted as a `tool_observed` event for `agentd report --what-if`."""
        plan = self.pipeline.plan(agent, argv)
        names.check_name(plan.tool_class, "tool class")
        seq = agent.next_seq
        agent.next_seq += 1
        tool_id = f"{seq:04d}-{plan.tool_class}"
        cg = f"{agent.tools_cgroup}/{tool_id}"
        placement = self.pipeline.observe(Call(agent, tuple(argv), plan, pid, key=f"{agent.agent_id}/{tool_id}",
                                               cgroup=cg))     # the forecast's memory.high
        tool = ToolCall(agent_id=agent.agent_id, tool_id=tool_id, cgroup=cg, argv=list(argv), plan=plan,
                        origin=origin, pid=pid, forecast=placement.forecast, placement=placement)
        would = {k: ("max" if v == "max" else str(v)) for k, v in placement.limits.items() if v is not None}
        adj = self.tool_oom_adj(agent, tool)
        log.info("tool %s (pid %d): would be placed in %s with %s, oom_score_adj %d [dry run]", tool.key, pid,
                 tool.cgroup, ", ".join(f"{k}={v}" for k, v in would.items()), adj)
        self.events.emit("tool_observed", agent=agent.agent_id, tool=tool_id, pid=pid, argv=tool.argv[:64],
                         tool_class=plan.tool_class, rule=plan.rule, origin=origin, limits=would,
                         oom_score_adj=adj, forecast_bytes=getattr(tool.forecast, "peak_bytes", None),
                         dry_run=True)
        return tool

    def attach(self, tool, proc):
        """Move `proc` (a kernel.pidfd.Proc, or a pid) into an existing tool-call cgroup
        (the fallback of clone-into)."""
        pid = _pid(proc)
        _verify(proc)
        self.fs.move(tool.cgroup, pid)
        tool.run.pid = pid
        agent = self.agents.get(tool.agent_id)
        if agent is not None:
            self._set_oom(proc, self.tool_oom_adj(agent, tool), f"tool {tool.key}", agent=agent.agent_id,
                          tool=tool.tool_id)
        self._save(tool=tool)

    # Limits a re-classification writes: memory.high belongs to the forecast (enforce/).
    RECLASSIFY_LIMITS = (cgf.MEMORY_MIN, cgf.MEMORY_LOW, cgf.MEMORY_MAX, cgf.CPU_WEIGHT, cgf.CPU_MAX, cgf.PIDS_MAX)

    def reclassify(self, tool, argv, why):
        """Plan `tool` again from `argv`, what the kernel says it runs (not what its client
        declared). A declaration may only lower a call's standing, never raise it: where
        what runs ranks lower (priority) than what was declared, the call gets that class's
        limits, priority and place in the OOM order, and one `tool_reclassify` event; a
        call declared humbler than it is keeps its declaration (the replay's stand-in
        program, say). Returns the new class, or None when nothing changed."""
        agent = self.agents.get(tool.agent_id)
        if agent is None or tool.done:
            return None
        plan = self.pipeline.plan(agent, argv)
        old = tool.plan
        if plan.priority >= old.priority:
            return None
        names.check_name(plan.tool_class, "tool class")
        limits = {k: v for k, v in plan.limits.items() if k in self.RECLASSIFY_LIMITS}
        plan = dataclasses.replace(plan, limits=dict(old.limits, **limits))
        tool.run.plan = plan
        try:
            tool.run.limits_applied.update(self._apply(tool.cgroup, limits, f"tool {tool.key}",
                                                   f"reclassified {old.tool_class} -> {plan.tool_class}: {why}"))
            adj = self.tool_oom_adj(agent, tool)
            for pid in self.fs.procs(tool.cgroup):
                # Held, and checked to be in the call's cgroup after the hold, so the write
                # cannot reach a process that took a listed pid since.
                try:
                    with self.procfs.hold(pid) as proc:
                        if self.procfs.cgroup(pid).strip("/") == tool.cgroup.strip("/"):
                            self._set_oom(proc, adj, f"tool {tool.key}")
                except AgentdError:
                    continue
        except CgroupGone:
            pass
        log.info("tool %s: reclassified %s -> %s (%s; declared argv %s)", tool.key, old.tool_class,
                 plan.tool_class, why, tool.argv[:8])
        self._save(tool=tool)
        self.events.emit("tool_reclassify", agent=tool.agent_id, tool=tool.tool_id, argv=list(argv)[:64],
                         declared_argv=tool.argv[:64], old_class=old.tool_class, tool_class=plan.tool_class,
                         rule=plan.rule, reason=why)
        return plan.tool_class

    def sample_tool(self, tool):
        """Current memory of a tool call: memory.current, else the sum of its processes' RSS."""
        try:
            text = self.fs.read_if_offered(tool.cgroup, cgf.MEMORY_CURRENT)
            if text is not None:
                cur = cgf.parse_int(text)
            elif self.sampler:
                cur = self.sampler(self.fs.procs(tool.cgroup))
            else:
                return None
        except (CgroupGone, ProcessGone):
            return None
        if cur is not None and cur > tool.peak_sample:
            tool.run.peak_sample = cur
        return cur

    def finish_tool(self, tool, status=None, rusage=None, reason="exited", force_kill=False, emptied=False,
                    later=None):
        """Deal with stragglers, collect accounting, remove the cgroup, log one event.
        `emptied`: the caller read the cgroup empty just before, with nothing run since
        (the API's wait for stragglers): it is not read again. `later(fn, *args)`: where
        the stages' end-of-call work runs (the API's loop.call_soon: after the reply has
        left, at the event loop's next turn); without it, here.

        Returns the result dict (also the machine-readable feedback for the agent).
        """
        if tool.done:
            return None
        agent = self.agents.get(tool.agent_id)
        cg = tool.cgroup
        stragglers = 0
        removed = True
        try:
            if not emptied and self.fs.populated(cg):     # CgroupGone when it is gone
                self.sample_tool(tool)
                stragglers = len(self.fs.procs(cg))
                if tool.frozen:
                    self.actuator.thaw_cgroup(cg)
                if force_kill or tool.plan.stragglers == "kill":
                    if not self.fs.wait_empty(cg, 0 if force_kill else tool.plan.straggler_grace_s):
                        if self.actuator.kill_cgroup(f"tool {tool.key}", cg, f"{stragglers} left after the call",
                                                     agent=tool.agent_id, tool=tool.tool_id):
                            self.fs.wait_empty(cg, 5.0)
                        else:
                            removed = False   # dry run: the sweep removes it once they are gone
                else:
                    removed = False       # "wait": leave it; the sweep removes it once empty
            accounting = self._accounting(tool)
            if removed:
                self.fs.rmdir(cg)
                self.actuator.forget(cg)
        except CgroupGone:
            accounting = self._accounting(tool, gone=True)
        except KernelError as err:
            log.warning("tool %s: cleanup failed: %s", tool.key, err)
            accounting = self._accounting(tool, gone=True)
            removed = False
        # What is recorded, and learnt from in the history (forecasts are keyed by
        # signature across agents), is the kernel's figures only: memory.peak, else the
        # daemon's own samples of the call's processes; cpu.stat; the daemon's clock. The
        # client's rusage is whatever the client chose to send: kept, labelled as such.
        kernel_peak = accounting.pop("memory_peak_cgroup")
        peak = max(kernel_peak or 0, tool.peak_sample)
        wall = time.monotonic() - tool.started_mono
        outcome = _outcome(status, tool, accounting)
        cpu = accounting.pop("cpu_s")
        result = {
            "agent": tool.agent_id, "tool": tool.tool_id, "argv": tool.argv[:64], "tool_class": tool.plan.tool_class,
            "rule": tool.plan.rule, "origin": tool.origin, "status": status, "outcome": outcome,
            "wall_s": round(wall, 4),
            "cpu_s": None if cpu is None else round(cpu, 4),
            "memory_peak_bytes": peak, "memory_events": accounting["memory_events"],
            "limits": tool.limits_applied, "actions": tool.actions, "stragglers": stragglers,
            "reason": reason, "cgroup_removed": removed,
            "memory_peak_source": "memory.peak" if kernel_peak is not None else "samples",
        }
        if rusage:
            result["reported"] = {k: rusage[k] for k in ("wall_s", "utime_s", "stime_s", "maxrss_kb") if k in rusage}
        if tool.forecast is not None:
            result["forecast_bytes"] = getattr(tool.forecast, "peak_bytes", None)
        tool.run.done = True
        if agent and removed:
            agent.tools.pop(tool.tool_id, None)
        c = self.counters["tool_finished"]
        k = (tool.plan.tool_class, outcome)
        c[k] = c.get(k, 0) + 1
        self._save(tool=tool, removed=True)
        self.events.emit("tool_end", **result)
        if later is None:
            self._tool_ended(agent, tool, result)
        else:
            later(self._tool_ended, agent, tool, result)
        return result

    def _tool_ended(self, agent, tool, result):
        """The stages' and the history's part of a finished call: learning from it (the
        forecast history's insert), releasing what it held (reservations, BPF map entries,
        weights). The call's reply does not depend on any of it."""
        self._each("on_tool_end", lambda h: h.on_tool_end(agent, tool, result))
        if self.history:
            try:
                self.history(tool, agent, result)
            except Exception as err:      # the history store must never stop a tool call
                log.warning("history: cannot record %s: %s", tool.key, err)

    def _accounting(self, tool, gone=False):
        acc = {"memory_events": {}, "memory_peak_cgroup": None, "cpu_s": None}
        if gone:
            return acc
        cg = tool.cgroup
        try:
            # One read per file, no stat first: a file the kernel does not offer costs
            # the stat only then (read_if_offered).
            text = self.fs.read_if_offered(cg, cgf.MEMORY_EVENTS)
            if text is not None:
                ev = cgf.parse_flat_keyed(text)
                acc["memory_events"] = {k: ev.get(k, 0) for k in ("low", "high", "max", "oom", "oom_kill")}
            text = self.fs.read_if_offered(cg, cgf.MEMORY_PEAK)
            if text is not None:
                acc["memory_peak_cgroup"] = cgf.parse_int(text)
            text = self.fs.read_if_offered(cg, cgf.CPU_STAT)
            if text is not None:
                acc["cpu_s"] = cgf.parse_flat_keyed(text).get("usage_usec", 0) / 1e6
        except (CgroupGone, KernelError, ValueError):
            pass
        return acc

    def sweep(self):
        """Finish tool calls whose cgroup emptied without a report (automatic mode, lost
        launchers) and remove those left waiting for stragglers. Cheap: one read each."""
        for agent in list(self.agents.values()):
            for tool in list(agent.tools.values()):
                try:
                    empty = not self.fs.exists(tool.cgroup) or not self.fs.populated(tool.cgroup)
                except CgroupGone:
                    empty = True
                if not empty:
                    continue
                if tool.done:
                    self.fs.rmdir(tool.cgroup)
                    self.actuator.forget(tool.cgroup)
                    agent.tools.pop(tool.tool_id, None)
                elif tool.origin != "launcher" or self._orphan_expired(tool):
                    # The exit status, where the lifecycle program reported the exit.
                    self.finish_tool(tool, status=tool.exit_status, reason="cgroup emptied")

    # A launcher whose daemon went away reconnects for ~3 s to report its tool call's exit
    # status; give it that long before finishing the call without one.
    ORPHAN_GRACE_S = 5.0

    def _orphan_expired(self, tool):
        since = tool.orphaned_since
        return since is not None and time.monotonic() - since >= self.ORPHAN_GRACE_S


def _pid(proc):
    return getattr(proc, "pid", proc)


def _verify(proc):
    """A held process (kernel.pidfd.Proc) must still be the one its pid named when it was
    checked: ProcessGone otherwise. A bare pid carries no identity to check."""
    verify = getattr(proc, "verify", None)
    if verify is not None:
        verify()


def _outcome(status, tool, acc):
    if any(a.get("action") == "kill" for a in tool.actions):
        return "killed"
    if acc["memory_events"].get("oom_kill"):
        return "oom_killed"
    if status is None:
        return "unknown"
    if "signal" in status:
        return "signaled"
    return "ok" if status.get("exit") == 0 else "failed"
