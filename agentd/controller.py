"""The agent / tool-call cgroup tree: create, place, limit, finish, re-adopt.

Layout under the controller's root (relative to the cgroup v2 mount):

    <root>/daemon                       the daemon's own process (a leaf, so the
                                        "no internal processes" rule never bites)
    <root>/agents/<agent>/main          the agent's own processes
    <root>/agents/<agent>/tools/<seq>-<class>   one cgroup per tool call

The controller is synchronous and owns no threads: the daemon's event loop calls it.
"""

import dataclasses
import logging
import time

from . import names, oom
from .clip import clip_argv
from .errors import AgentdError, CgroupGone, KernelError, ProcessGone, RequestError
from .kernel import cgroupfs as cgf
from .model import Agent, ToolCall
from .pipeline import Call, Pipeline
from .policy.planner import Planner

log = logging.getLogger("agentd.controller")

AGENTS = "agents"
CAP_SYS_RESOURCE = 24             # capability(7): pins oom_score_adj_min (agentd/oom.py)


class Controller:
    def __init__(self, fs, root, caps, planner, state, events, procfs, sampler=None, history=None,
                 actuator=None):
        from .enforce.actuator import Actuator
        self.fs = fs                  # CgroupFS
        # Every limit, oom_score_adj and kill goes through the actuator: logged old -> new,
        # and only decided (not written) in a dry run.
        self.actuator = actuator or Actuator(fs, events, procfs=procfs)
        self.root = root.strip("/")
        self.caps = caps
        self.planner = planner        # policy front: agent_limits(), plan_tool()
        self.state = state            # StateStore
        self.events = events          # EventLog
        self.procfs = procfs
        self.sampler = sampler        # callable(cgroup, pids) -> bytes, for hosts without memory.current
        self.history = history        # optional: record(toolcall, result)
        self.agents = {}
        self.counters = {"tool_started": {}, "tool_finished": {}}
        self.hooks = []               # the stages (agentd/stages.py), in App.STAGES order
        self.pipeline = Pipeline(self)
        self.oom_warned = False

    # --- tree ----------------------------------------------------------------
    @property
    def agents_cgroup(self):
        return f"{self.root}/{AGENTS}"

    def setup(self):
        """Create the root and enable controllers down to it, as far as the kernel allows."""
        self.fs.makedirs(self.agents_cgroup)
        self.enable_path(self.agents_cgroup)

    def enable_path(self, cg):
        """Enable controllers on every ancestor of `cg` below the mount, so its children get them.

        Writing subtree_control needs the ancestor to have no processes of its own; where
        that fails, agentd works with what it has (the capability warning says so).
        """
        parts = cg.strip("/").split("/")
        for i in range(0, len(parts) + 1):
            parent = "/".join(parts[:i])
            try:
                self.fs.enable_controllers(parent)
            except KernelError as err:
                log.debug("cannot enable controllers on %r: %s", parent or "/", err)

    def _save(self, agent=None, tool=None, removed=False):
        """Journal what changed (cheap), or write a full snapshot when nothing is named."""
        if agent is None and tool is None or self.state.needs_compaction():
            agents = {a.agent_id: a.to_state() for a in self.agents.values()}
            tools = {t.key: t.to_state() for a in self.agents.values() for t in a.tools.values() if not t.done}
            self.state.compact(agents, tools)
            return
        if agent is not None:
            self.state.record("agent", agent.agent_id, None if removed else agent.to_state())
        if tool is not None:
            self.state.record("tool", tool.key, None if (removed or tool.done) else tool.to_state())

    def _apply(self, cg, limits, who, reason, fresh=False, agent=None, tool=None):
        """Write limit files through the actuator (see Actuator.set_limits)."""
        return self.actuator.set_limits(who, cg, limits, reason, fresh=fresh, agent=agent, tool=tool)

    # cgroup.max.descendants of an agent: its tool-call cap, plus main, tools, and room for
    # cgroups the agent nests itself or calls still draining. The kernel then refuses a
    # mkdir past it on every path (API, automatic detection, a delegated agent), so one
    # agent cannot fill the tree with empty cgroups that every walk of it pays for.
    DESCENDANTS_SLACK = 64

    def _bound_descendants(self, cg, who):
        try:
            cap = self.planner.policy.daemon.max_tool_calls_per_agent
        except AttributeError:
            return
        if self.actuator.decided_only("set", who, "tool-call cap", agent=cg.rpartition("/")[2],
                                      changes={cgf.CGROUP_MAX_DESCENDANTS: ["max", str(cap + self.DESCENDANTS_SLACK)]}):
            return
        try:
            self.fs.write_if_offered(cg, cgf.CGROUP_MAX_DESCENDANTS, str(cap + self.DESCENDANTS_SLACK))
        except CgroupGone:
            raise
        except KernelError as err:
            log.warning("%s: cannot set %s: %s", who, cgf.CGROUP_MAX_DESCENDANTS, err)

    def _kill_whole(self, cg, who):
        """memory.oom.group=1: an OOM victim inside `cg` takes all of it (agentd/oom.py).
        It scopes the kernel's kill and limits nothing, so it is written apart from the
        limits: not in limits_applied (status, events) nor in their log lines."""
        try:
            if self.actuator.dry_run:
                return            # no limit, so nothing to scope; the kernel's own OOM rules stay
            self.fs.write_if_offered(cg, cgf.MEMORY_OOM_GROUP, "1")
        except CgroupGone:
            raise
        except KernelError as err:
            log.warning("%s: cannot set %s=1 (an OOM kill may take part of it): %s", who, cgf.MEMORY_OOM_GROUP, err)

    # --- agents --------------------------------------------------------------
    def create_agent(self, name=None, agent_class=None, uid=0, policy=None, standalone=False, view=None):
        """`view`: (policy text, Policy) the agent runs under instead of the daemon's
        (policy/overlay.py: its own policy within the daemon's), or None."""
        if name is None:
            name = self._fresh_agent_name()
        names.check_name(name, "agent name")
        if name in self.agents or self.fs.exists(f"{self.agents_cgroup}/{name}"):
            raise RequestError("exists", f"an agent named {name!r} already runs; pick another --name")
        planner = Planner(view[1], self.planner.host_memory) if view else self.planner
        cls_name, priority, limits = planner.agent_limits(agent_class)
        cg = f"{self.agents_cgroup}/{name}"
        self.fs.mkdir(cg, exist_ok=False)
        agent = Agent(agent_id=name, cgroup=cg, agent_class=cls_name, priority=priority, uid=uid,
                      policy=policy, standalone=standalone)
        if view:
            agent.policy_text, agent.view, agent.planner = view[0], view[1], planner
        try:
            self.fs.mkdir(agent.main_cgroup)
            self.fs.mkdir(agent.tools_cgroup)
            self.fs.enable_controllers(cg)
            self.fs.enable_controllers(agent.tools_cgroup)
            agent.limits_applied = self._apply(cg, limits, f"agent {name}", f"class {cls_name}", agent=name)
            self._bound_descendants(cg, f"agent {name}")
        except AgentdError:
            self.fs.remove_tree(cg)
            raise
        self.agents[name] = agent
        self._save(agent=agent)
        self.events.emit("agent_start", agent=name, agent_class=cls_name, limits=agent.limits_applied,
                         **self._dry())
        self._each("on_agent_start", lambda h: h.on_agent_start(agent))
        return agent

    # The class limits that follow the memory agentd manages (policy percentages). The
    # others do not: cpu.weight is the CPU stage's to set, cpu.max and pids.max have
    # nothing to do with the memory size.
    SIZED_LIMITS = (cgf.MEMORY_MIN, cgf.MEMORY_LOW, cgf.MEMORY_HIGH, cgf.MEMORY_MAX)

    def resize_agents(self, reason):
        """Write each running agent's memory limits again from its class in the current
        planner: a policy's percentages resolve against the memory agentd manages, and
        when that changes (a slice or container resized) running agents follow, not only
        the ones started after. An agent whose class left the policy keeps its limits."""
        for agent in list(self.agents.values()):
            try:
                _, _, limits = self.planner_of(agent).agent_limits(agent.agent_class)
            except AgentdError as err:
                log.warning("agent %s keeps its memory limits: %s", agent.agent_id, err)
                continue
            sized = {k: v for k, v in limits.items() if k in self.SIZED_LIMITS}
            try:
                agent.limits_applied.update(self._apply(agent.cgroup, sized, f"agent {agent.agent_id}", reason,
                                                        agent=agent.agent_id))
            except CgroupGone:
                continue

    def agent_view(self, source, text):
        """(text, Policy) for an agent that brings its own policy `text` (named `source`):
        the daemon's policy with it applied where it may be (policy/overlay.py).
        PolicyError lists every place it asks for more than the daemon's policy allows."""
        from .policy.overlay import agent_policy
        return text, agent_policy(self.planner.policy, text, source or "<agent policy>", self.planner.host_memory)

    def planner_of(self, agent):
        """The planner for `agent`'s tool calls: its own policy's view, else the daemon's."""
        return agent.planner or self.planner

    def set_view(self, agent, view):
        """Put `agent` under `view` ((text, Policy), or None for the daemon's policy), e.g.
        after a reload re-checked its own policy against the new daemon policy."""
        agent.policy_text, agent.view = (view[0], view[1]) if view else (None, None)
        agent.planner = Planner(view[1], self.planner.host_memory) if view else None
        self._save(agent=agent)

    def _fresh_agent_name(self):
        base = time.strftime("a%Y%m%d-%H%M%S")
        for i in range(1000):
            n = base if i == 0 else f"{base}-{i}"
            if n not in self.agents and not self.fs.exists(f"{self.agents_cgroup}/{n}"):
                return n
        raise AgentdError("cannot find a free agent name")

    def place_main(self, agent, proc):
        """Move the agent's first process (`proc`: a kernel.pidfd.Proc, or a pid) into main."""
        pid = _pid(proc)
        _verify(proc)
        self.fs.move(agent.main_cgroup, pid)
        agent.main_pids.add(pid)
        try:
            allowed = self.planner_of(agent).policy.agent_class(agent.agent_class).kill_main_allowed
        except AgentdError:
            allowed = False
        value = oom.main_adj(allowed)
        if value < 0 and self.caps is not None and not getattr(self.caps, "sys_resource", True):
            return                    # the capability probe has said so once
        self._set_oom(proc, value, f"agent {agent.agent_id}", agent=agent.agent_id)

    def _set_oom(self, proc, value, who, agent=None, tool=None):
        """The kernel OOM killer's order (agentd/oom.py); a process that is already gone or
        a /proc that refuses costs a log line, not the call. A held process is verified
        first: a pid that names another process by now is not written."""
        pid = _pid(proc)
        try:
            _verify(proc)
            self.actuator.set_oom(pid, value, who, agent=agent, tool=tool)
        except ProcessGone:
            pass
        except KernelError as err:
            if value < 0 and not self.oom_warned:
                # Lowering needs CAP_SYS_RESOURCE (a container may drop it). Tool calls still
                # get their raised values, so the killer prefers them, just by less.
                log.warning("cannot protect agents from the OOM killer (%s: agentd lacks CAP_SYS_RESOURCE?); "
                            "tool calls still go first", err)
                self.oom_warned = True
            else:
                log.debug("%s: oom_score_adj of %d not set: %s", who, pid, err)

    def tool_oom_adj(self, agent, tool):
        return oom.tool_adj(agent.priority, tool.plan.priority)

    def launcher_oom_adj(self, agent, tool):
        """The oom_score_adj the launcher's child writes for itself before exec ("" = none:
        in a dry run the decision is logged here and nothing is written)."""
        value = self.tool_oom_adj(agent, tool)
        if self.actuator.dry_run:
            self.actuator.set_oom(tool.pid, value, f"tool {tool.key}", agent=agent.agent_id,
                                  tool=tool.tool_id)
            return ""
        return str(value)

    def launcher_places_itself(self, pid):
        """May the launcher `pid` start its tool call directly in the cgroup (clone3 into
        it) and set the call's oom_score_adj from inside, without the daemon placing it?

        Only where that write pins the call's floor as well as the daemon's would: the
        launcher holds CAP_SYS_RESOURCE itself, or the daemon lacks it too (then nobody
        pins, and a move would cost a grace period for nothing). Otherwise the launcher's
        own write raises the value but leaves the agent's floor, and the call could lower
        itself back to the agent's -800 (agentd/oom.py); the daemon moves the held child
        and writes the value itself (attach) before the tool runs."""
        if self.caps is None or not getattr(self.caps, "sys_resource", False):
            return True
        try:
            return self.procfs.has_capability(pid, CAP_SYS_RESOURCE)
        except KernelError:
            return False

    def agent_of_cgroup(self, cgroup_path):
        """(agent, tool_or_None) for a process's cgroup path ("/<root>/agents/<id>/..."), or (None, None)."""
        rel = cgroup_path.strip("/")
        prefix = self.agents_cgroup + "/"
        if not rel.startswith(prefix):
            return None, None
        parts = rel[len(prefix):].split("/")
        agent = self.agents.get(parts[0])
        if agent is None:
            return None, None
        if len(parts) >= 3 and parts[1] == "tools":
            return agent, agent.tools.get(parts[2])
        return agent, None

    def in_agents_tree(self, cgroup_path):
        """Is a process in this cgroup inside some agent's subtree (known to us or not)?"""
        return cgroup_path.strip("/").startswith(self.agents_cgroup + "/")

    def agent_of_pid(self, pid):
        return self.agent_of_cgroup(self.procfs.cgroup(pid))

    def remove_agent(self, agent, kill=True, reason="ended"):
        """Tear down an agent's tree. Tool calls still running are finished first."""
        # Events still queued for it (a batched exec report of its last spawn) are read
        # while it is known, not dropped once it is gone.
        self._each("before_agent_end", lambda h: h.before_agent_end(agent))
        for tool in list(agent.tools.values()):
            self.finish_tool(tool, status=None, reason=reason, force_kill=kill)
        try:
            if kill and self.fs.exists(agent.cgroup) and self.fs.populated(agent.cgroup):
                if not self.actuator.kill_cgroup(f"agent {agent.agent_id}", agent.cgroup, reason,
                                                 agent=agent.agent_id):
                    # Dry run: its leftovers run on; the sweep removes it once they are gone.
                    agent.detached = True
                    return
                self.fs.wait_empty(agent.cgroup, 2.0)
            self.fs.remove_tree(agent.cgroup)
        except CgroupGone:
            pass
        except KernelError as err:
            log.warning("agent %s: cannot remove its cgroup: %s", agent.agent_id, err)
        self.agents.pop(agent.agent_id, None)
        self._save(agent=agent, removed=True)
        self.events.emit("agent_end", agent=agent.agent_id, reason=reason)
        self._each("on_agent_end", lambda h: h.on_agent_end(agent))

    # --- tool calls ----------------------------------------------------------
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
            tool.limits_applied = self._apply(cg, placement.limits, f"tool {tool.key}",
                                              f"class {plan.tool_class}" + (f", rule {plan.rule}" if plan.rule else ""),
                                              fresh=True, agent=agent.agent_id, tool=tool_id)
            self._kill_whole(cg, f"tool {tool.key}")
            tool.cgroup_id = self.fs.cgroup_id(cg)
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
        tool.pid = pid
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
        tool.plan = plan
        try:
            tool.limits_applied.update(self._apply(tool.cgroup, limits, f"tool {tool.key}",
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
            tool.peak_sample = cur
        return cur

    def finish_tool(self, tool, status=None, rusage=None, reason="exited", force_kill=False):
        """Deal with stragglers, collect accounting, remove the cgroup, log one event.

        Returns the result dict (also the machine-readable feedback for the agent).
        """
        if tool.done:
            return None
        agent = self.agents.get(tool.agent_id)
        cg = tool.cgroup
        stragglers = 0
        removed = True
        try:
            if self.fs.populated(cg):         # CgroupGone when it is gone
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
        tool.done = True
        if agent and removed:
            agent.tools.pop(tool.tool_id, None)
        c = self.counters["tool_finished"]
        k = (tool.plan.tool_class, outcome)
        c[k] = c.get(k, 0) + 1
        self._save(tool=tool, removed=True)
        self.events.emit("tool_end", **result)
        self._each("on_tool_end", lambda h: h.on_tool_end(agent, tool, result))
        if self.history:
            try:
                self.history(tool, agent, result)
            except Exception as err:      # the history store must never stop a tool call
                log.warning("history: cannot record %s: %s", tool.key, err)
        return result

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

    def _dry(self):
        """Marks an event's limits as what a dry run would have set (none was written)."""
        return {"dry_run": True} if self.actuator.dry_run else {}

    def _each(self, name, call):
        """`call(stage)` for every stage; a stage that fails costs a log line, not the call."""
        for h in self.hooks:
            try:
                call(h)
            except Exception:
                log.exception("stage %s.%s failed", type(h).__name__, name)


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
