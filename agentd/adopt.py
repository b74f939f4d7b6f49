"""Re-adopting the tree after a daemon restart (or kill -9).

Agents and tool calls keep running while the daemon is away. On start the daemon walks
its subtree: every agent and tool-call cgroup that still has processes is taken back
(argv, class and sequence numbers from the state file where it has them), every empty
leftover is logged as ended and removed.
"""

import logging
import time

from .errors import AgentdError, CgroupGone, KernelError
from .model import Agent, ToolCall, ToolPlan
from .policy.planner import Planner

log = logging.getLogger("agentd.adopt")


def readopt(ctl):
    """Rebuild `ctl.agents` from cgroupfs + state. Returns (agents, tools, removed) counts."""
    state = ctl.state.load()
    fs = ctl.fs
    n_agents = n_tools = removed = 0
    try:
        agent_names = fs.children(ctl.agents_cgroup)
    except CgroupGone:
        return 0, 0, 0
    for name in agent_names:
        cg = f"{ctl.agents_cgroup}/{name}"
        st = state["agents"].get(name, {})
        agent = Agent(agent_id=name, cgroup=cg, agent_class=st.get("class", "unknown"),
                      priority=st.get("priority", 0), uid=st.get("uid", 0), policy=st.get("policy"),
                      created=st.get("created", time.time()), next_seq=st.get("next_seq", 1))
        if st.get("policy_text"):
            # The agent brought its own policy: it runs under it again, checked against the
            # policy this daemon runs now; one that no longer fits leaves it on the daemon's.
            try:
                view = ctl.agent_view(agent.policy, st["policy_text"])
                agent.policy_text, agent.view = view
                agent.planner = Planner(view[1], ctl.planner.host_memory)
            except AgentdError as err:
                log.warning("agent %s: its own policy no longer fits under the daemon's; it runs under the "
                            "daemon's policy: %s", name, err)
        try:
            tool_names = fs.children(agent.tools_cgroup) if fs.exists(agent.tools_cgroup) else []
            for tname in tool_names:
                tcg = f"{agent.tools_cgroup}/{tname}"
                seq = _seq(tname)
                if seq is not None:
                    agent.next_seq = max(agent.next_seq, seq + 1)
                tst = state["tools"].get(f"{name}/{tname}", {})
                launcher_may_report = tst.get("origin") == "launcher"
                if not fs.populated(tcg) and not launcher_may_report:
                    fs.rmdir(tcg)
                    removed += 1
                    ctl.events.emit("tool_end", agent=name, tool=tname, outcome="unknown",
                                    reason="ended while the daemon was down")
                    continue
                cls = tst.get("class") or tname.partition("-")[2] or "unknown"
                plan = ToolPlan(tool_class=cls, priority=tst.get("priority", 0), limits={},
                                stragglers=tst.get("stragglers", "kill"))
                tool = ToolCall(agent_id=name, tool_id=tname, cgroup=tcg, argv=tst.get("argv", []), plan=plan,
                                origin=tst.get("origin", "adopted"), intent=tst.get("intent"),
                                pid=tst.get("pid"), started=tst.get("started", time.time()),
                                limits_applied=tst.get("limits", {}),
                                # A call offloaded from the GPU keeps its CPU weight across a
                                # restart (the CPU stage applies it again when it takes the call back).
                                offload_cpu_weight=tst.get("offload_cpu_weight"),
                                cgroup_id=fs.cgroup_id(tcg),
                                # The launcher that owned it reconnects to report the exit (even
                                # when the call ended while we were away); the sweep finishes it
                                # once its cgroup is empty and the launcher's grace has passed.
                                orphaned_since=time.monotonic())
                agent.tools[tname] = tool
                n_tools += 1
            main_alive = fs.exists(agent.main_cgroup) and fs.populated(agent.main_cgroup)
            if not main_alive and not agent.tools:
                fs.remove_tree(cg)
                removed += 1
                ctl.events.emit("agent_end", agent=name, reason="ended while the daemon was down")
                continue
            if main_alive:
                agent.main_pids = set(fs.procs(agent.main_cgroup))
        except CgroupGone:
            continue
        except KernelError as err:
            log.warning("cannot re-adopt agent %s: %s", name, err)
            continue
        # No `agentd run` is connected to an adopted agent: the sweep ends it once its
        # processes are gone (its run client also reconnects to report, if it can).
        agent.detached = True
        ctl.agents[name] = agent
        n_agents += 1
        ctl.events.emit("agent_adopted", agent=name, tools=sorted(agent.tools))
        ctl._each("on_agent_start", lambda h, agent=agent: h.on_agent_start(agent))
        for tool in agent.tools.values():
            ctl._each("on_tool_start", lambda h, agent=agent, tool=tool: h.on_tool_start(agent, tool))
    ctl._save()
    if n_agents or removed:
        log.info("re-adopted %d agents and %d tool calls; removed %d empty leftovers", n_agents, n_tools, removed)
    return n_agents, n_tools, removed


def _seq(tool_name):
    head = tool_name.partition("-")[0]
    return int(head) if head.isdigit() else None
