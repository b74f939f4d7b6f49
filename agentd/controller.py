"""The agent / tool-call cgroup tree: create, place, limit, finish, re-adopt.

Layout under the controller's root (relative to the cgroup v2 mount):

    <root>/daemon                       the daemon's own process (a leaf, so the
                                        "no internal processes" rule never bites)
    <root>/agents/<agent>/main          the agent's own processes
    <root>/agents/<agent>/tools/<seq>-<class>   one cgroup per tool call

The controller is synchronous and owns no threads: the daemon's event loop calls it.
"""

import logging
import time

from . import names, oom
from .errors import AgentdError, CgroupGone, KernelError, ProcessGone, RequestError
from .kernel import cgroupfs as cgf
from .kernel.procfs import CAP_SYS_RESOURCE
from .model import Agent
from .pipeline import Pipeline
from .toolcalls import ToolCalls, _pid, _verify
from .policy.planner import Planner

log = logging.getLogger("agentd.controller")

AGENTS = "agents"


class Controller(ToolCalls):
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
        spared = self._runtime_at_work(agent) if kill else None
        for tool in list(agent.tools.values()):
            if spared and tool.tool_id in spared[0]:
                continue              # stopping or removing a container: left to finish
            self.finish_tool(tool, status=None, reason=reason, force_kill=kill)
        if spared:
            self._end_around_runtime(agent, reason)
            return
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

    def _runtime_at_work(self, agent):
        for h in self.hooks:
            fn = getattr(h, "runtime_at_work", None)
            if fn:
                try:
                    return fn(agent)
                except Exception:
                    log.exception("hook %s.runtime_at_work failed", type(h).__name__)
        return None

    def _end_around_runtime(self, agent, reason):
        """The agent ended while a container runtime still works for it (a container of its
        runs, a tool call stops one; monitor/containers.py): what is left in main is killed,
        the runtime's part is not (killing conmon or a `podman stop` breaks the runtime).
        The sweep removes the agent once that part is gone too."""
        try:
            if self.fs.exists(agent.main_cgroup) and self.fs.populated(agent.main_cgroup):
                self.actuator.kill_cgroup(f"agent {agent.agent_id}", agent.main_cgroup, reason,
                                          agent=agent.agent_id)
        except AgentdError as err:
            log.warning("agent %s: cannot kill what is left in main: %s", agent.agent_id, err)
        if not getattr(agent, "detached", False):
            log.info("agent %s ended; its container runtime work goes on, its cgroup goes after", agent.agent_id)
        agent.detached = True

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
