"""What a GPU placement decision does to a tool call (the GPU stage's effects):
its environment (CUDA_VISIBLE_DEVICES, MPS), the CPU weight it asks the CPU stage for when
offloaded, the device program on its cgroup when sent to the CPU, the sentence the agent
reads, and the placement event. `hook` is the GpuHook (devices, policy, counters, events).
"""

import dataclasses
import logging
import time

from ..errors import AgentdError, CgroupGone
from ..kernel import cgroupfs as cgf
from ..units import format_size, parse_size
from . import placement as pl

log = logging.getLogger("agentd.gpu")


@dataclasses.dataclass
class Placed:
    """A running call agentd placed on a GPU (or one seen holding GPU memory)."""
    agent: str
    device: int | None
    forecast: int
    peak: int = 0


def _program(argv):
    from ..feedback import _program as prog
    return prog(argv)


def apply(hook, agent, tool, d):
    tg = getattr(getattr(tool.plan, "decision", None), "gpu", None)
    env, msg = {}, None
    prog = _program(tool.argv)
    if d.outcome == pl.GPU:
        dev = next((x for x in hook.devices if x.index == d.device), None)
        limit = getattr(tg, "mps_pinned_mem_limit", None)
        if limit is not None:
            limit = parse_size(limit, dev.memory_total if dev else hook.max_total)
        env = pl.gpu_env(dev.uuid if dev else str(d.device), hook.mps(),
                         getattr(tg, "mps_active_thread_percentage", None), limit)
        hook.placed[tool.key] = Placed(agent.agent_id, d.device, d.forecast)
        waited = f" after waiting {d.waited:.1f} s" if d.waited else ""
        msg = (f"[agentd] {prog} runs on GPU {d.device}{waited} ({dev.name if dev else 'GPU'}): it is forecast "
               f"to need {format_size(d.forecast)} of GPU memory")
    elif d.outcome in (pl.OFFLOAD, pl.CPU):
        env = pl.cpu_env()
        hidden = hide_gpus(hook, tool)
        if d.outcome == pl.OFFLOAD:
            weight = getattr(tg, "offload_cpu_weight", None)
            if weight is not None:
                # The CPU stage owns cpu.weight and gives an offloaded call this weight
                # (sched/weights.py tool_weight); the plan carries it too, so the
                # controller's first write (and limits_applied) agrees with it, and a
                # daemon without a CPU stage still applies it.
                tool.offload_cpu_weight = int(weight)
                tool.plan.limits[cgf.CPU_WEIGHT] = str(int(weight))
            reason = why(d, None, agent=hook.budget_limit(agent.agent_class))
            waited = f" after waiting {d.waited:.1f} s" if d.waited else ""
            msg = (f"[agentd] {prog} runs on the CPU, not a GPU{waited}: it is forecast to need "
                   f"{format_size(d.forecast)} of GPU memory and {reason}; no GPU is visible to it "
                   f"(CUDA_VISIBLE_DEVICES is empty), so use CPU code paths or a smaller model")
    if env:
        tool.env = {**(getattr(tool, "env", None) or {}), **env}
    if msg:
        if not hasattr(tool, "start_messages"):
            tool.start_messages = []
        tool.start_messages.append(msg)
    if d.waited is not None:
        tool.actions.append({"action": "gpu_queue", "reason": d.reason, "seconds": round(d.waited, 3),
                             "forecast_bytes": d.forecast, "timed_out": d.timed_out,
                             "ts": round(time.time() - d.waited, 3)})
    tool.gpu_placement = {"outcome": d.outcome, "device": d.device, "forecast_bytes": d.forecast,
                          "reason": d.reason}
    if d.outcome in (pl.OFFLOAD, pl.CPU):
        tool.gpu_placement["devices_hidden"] = hidden
    hook.counters["placements"][d.outcome] = hook.counters["placements"].get(d.outcome, 0) + 1
    if d.outcome != pl.UNMANAGED:
        hook.app.events.emit("gpu_placement", agent=agent.agent_id, tool=tool.tool_id, outcome=d.outcome,
                             device=d.device, forecast_bytes=d.forecast, reason=d.reason, env=env,
                             devices_hidden=tool.gpu_placement.get("devices_hidden"))
        log.info("tool %s: GPU placement %s%s (forecast %s%s)", tool.key, d.outcome,
                 "" if d.device is None else f" on GPU {d.device}", format_size(d.forecast),
                 f", {d.reason}" if d.reason else "")


def hide_gpus(hook, tool):
    """Attach the device program to the call's cgroup before any of its processes runs
    there: the environment hides the GPUs from a call that reads it, this hides them
    from one that does not (an automatically detected call, or one that resets
    CUDA_VISIBLE_DEVICES). True if hidden."""
    if hook.devguard is None:
        return False
    actuator = getattr(hook.app.ctl, "actuator", None)
    if actuator is not None and actuator.decided_only("hide the GPUs (device program)", f"tool {tool.key}",
                                                      "placed on the CPU", agent=tool.agent_id, tool=tool.tool_id):
        return False
    try:
        hook.devguard.hide(hook.app.fs.path(tool.cgroup))
    except CgroupGone:
        return False
    except AgentdError as err:
        if str(err) != hook._guard_error:        # once per distinct failure, not per call
            log.warning("tool %s: cannot hide the GPUs from it (it sees them, CUDA_VISIBLE_DEVICES aside): %s",
                        tool.key, err)
            hook._guard_error = str(err)
        return False
    return True


def why(p, r, agent=None):
    """Why a call did not get a GPU, for the agent's sentence."""
    free = f"the most free on any GPU is {format_size(p.free)}"
    return {
        "no_room": f"no GPU has that much free ({free})",
        "agent_budget": "its agent's GPU memory budget" + (f" ({format_size(agent)})" if agent else "") +
                        " is taken by its other GPU calls",
        "over_budget_alone": "that is more than its agent's GPU memory budget" +
                             (f" ({format_size(agent)})" if agent else ""),
        "higher_priority_waiting": f"a higher-priority GPU call is waiting for that room ({free})",
        "earlier_waiting": f"an earlier GPU call is waiting for that room ({free})",
        "wait_timed_out": f"no GPU had room before the wait timed out ({free})",
    }.get(p.reason, p.reason or "no GPU has room")
