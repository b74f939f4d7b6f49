"""GPU budgets while tool calls run: an agent over its class's `memory_budget` gets the
class's `over_budget` action on its lowest-priority call that holds GPU memory.

- `notify`: once per call and over-budget episode, a notice to the call's client through
  the actuator and the API's outbox (the launcher prints it to the call's stderr) and an
  action in its result.
- `kill`: the call's cgroup is killed (cgroup.kill through the actuator: dry-run aware); its
  memory then counts as leaving, so the next tick does not pick a second victim for it.
Memory held by an agent's main process counts towards its budget, but agentd stops only
tool calls: with no tool call holding GPU memory, nothing is done.
"""

import logging
import time

from ..errors import CgroupGone
from ..units import format_size

log = logging.getLogger("agentd.gpu")


def _program(argv):
    from ..policy.match import program_of as prog
    return prog(argv)


def enforce(hook):
    """Each agent over its GPU budget: its class's action on its lowest-priority GPU call."""
    for agent in list(hook.app.ctl.agents.values()):
        limit = hook.budget_limit(agent.agent_class)
        if limit is None:
            continue
        # Memory of calls already killed is on its way out: do not take a second victim for it.
        held = hook.agent_usage.get(agent.agent_id, 0) - sum(
            hook.tool_usage.get(k, 0) for k in hook.killed if k.startswith(agent.agent_id + "/"))
        if held <= limit:
            hook.notified -= {k for k in hook.notified if k.startswith(agent.agent_id + "/")}
            continue
        victims = [t for t in agent.tools.values()
                   if not t.done and t.key not in hook.killed and hook.tool_usage.get(t.key, 0) > 0]
        if not victims:
            continue                  # the main process itself holds it: nothing agentd may stop
        t = min(victims, key=lambda t: (t.plan.priority, -t.started_mono))
        action = hook.agent_gpu(agent).over_budget
        reason = (f"GPU memory budget: agent {agent.agent_id} holds {format_size(held)} of GPU memory, over its "
                  f"{format_size(limit)} budget; {_program(t.argv)} is its lowest-priority GPU call and holds "
                  f"{format_size(hook.tool_usage.get(t.key, 0))}")
        if action == "kill":
            kill(hook, agent, t, reason)
        elif t.key not in hook.notified:
            notify(hook, agent, t, reason)


def notify(hook, agent, tool, reason):
    hook.notified.add(tool.key)
    hook.counters["budget_actions"]["notify"] += 1
    hook.app.ctl.actuator.record(tool, {"action": "gpu_over_budget", "reason": reason, "ts": round(time.time(), 3)})
    hook.app.ctl.actuator.notify(tool, "gpu_over_budget", f"[agentd] {reason}: free GPU memory (smaller batches "
                                                          f"or model) or it may be stopped")
    hook.app.events.emit("action", agent=agent.agent_id, tool=tool.tool_id, action="gpu_notify", reason=reason)
    log.warning("tool %s: %s (notified)", tool.key, reason)


def kill(hook, agent, tool, reason):
    hook.killed.add(tool.key)
    hook.counters["budget_actions"]["kill"] += 1
    hook.app.ctl.actuator.record(tool, {"action": "kill", "reason": reason, "ts": round(time.time(), 3)})
    try:
        # Through the actuator: a dry run decides and logs the kill, and writes nothing.
        hook.app.ctl.actuator.kill_cgroup(f"tool {tool.key}", tool.cgroup, reason, agent=agent.agent_id,
                                          tool=tool.tool_id)
    except CgroupGone:
        pass
    hook.app.events.emit("action", agent=agent.agent_id, tool=tool.tool_id, action="kill", reason=reason)
    log.warning("tool %s: killed: %s", tool.key, reason)
