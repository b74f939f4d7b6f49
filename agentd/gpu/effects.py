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
from ..pipeline import Share
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
    from ..policy.match import program_of as prog
    return prog(argv)


def share(hook, call, d):
    """The call's share of its Placement for decision `d` (pipeline.Share); the device
    program is attached here, to the call's cgroup made empty just before."""
    agent = call.agent
    tg = getattr(call.plan.decision, "gpu", None)
    env, msg, limits, weight, actions = {}, None, {}, None, ()
    prog = _program(call.argv)
    if d.outcome == pl.GPU:
        dev = next((x for x in hook.devices if x.index == d.device), None)
        limit = getattr(tg, "mps_pinned_mem_limit", None)
        if limit is not None:
            limit = parse_size(limit, dev.memory_total if dev else hook.max_total)
        env = pl.gpu_env(dev.uuid if dev else str(d.device), hook.mps(),
                         getattr(tg, "mps_active_thread_percentage", None), limit)
        hook.placed[call.key] = Placed(agent.agent_id, d.device, d.forecast)
        waited = f" after waiting {d.waited:.1f} s" if d.waited else ""
        msg = (f"[agentd] {prog} runs on GPU {d.device}{waited} ({dev.name if dev else 'GPU'}): it is forecast "
               f"to need {format_size(d.forecast)} of GPU memory")
    elif d.outcome in (pl.OFFLOAD, pl.CPU):
        env = pl.cpu_env()
        hidden = hide_gpus(hook, call)
        if d.outcome == pl.OFFLOAD:
            weight = getattr(tg, "offload_cpu_weight", None)
            if weight is not None:
                # The CPU stage owns cpu.weight and gives an offloaded call this weight
                # (sched/weights.py tool_weight); the Placement carries it too, so the
                # controller's first write (and limits_applied) agrees with it, and a
                # daemon without a CPU stage still applies it.
                weight = int(weight)
                limits[cgf.CPU_WEIGHT] = str(weight)
            reason = why(d, None, agent=hook.budget_limit(agent.agent_class))
            waited = f" after waiting {d.waited:.1f} s" if d.waited else ""
            msg = (f"[agentd] {prog} runs on the CPU, not a GPU{waited}: it is forecast to need "
                   f"{format_size(d.forecast)} of GPU memory and {reason}; no GPU is visible to it "
                   f"(CUDA_VISIBLE_DEVICES is empty), so use CPU code paths or a smaller model")
    if d.waited is not None:
        actions = ({"action": "gpu_queue", "reason": d.reason, "seconds": round(d.waited, 3),
                    "forecast_bytes": d.forecast, "timed_out": d.timed_out,
                    "ts": round(time.time() - d.waited, 3)},)
    gpu = {"outcome": d.outcome, "device": d.device, "forecast_bytes": d.forecast, "reason": d.reason}
    if d.outcome in (pl.OFFLOAD, pl.CPU):
        gpu["devices_hidden"] = hidden
    hook.counters["placements"][d.outcome] = hook.counters["placements"].get(d.outcome, 0) + 1
    if d.outcome != pl.UNMANAGED:
        hook.app.events.emit("gpu_placement", agent=agent.agent_id, tool=call.key.partition("/")[2],
                             outcome=d.outcome, device=d.device, forecast_bytes=d.forecast, reason=d.reason,
                             env=env, devices_hidden=gpu.get("devices_hidden"))
        log.info("tool %s: GPU placement %s%s (forecast %s%s)", call.key, d.outcome,
                 "" if d.device is None else f" on GPU {d.device}", format_size(d.forecast),
                 f", {d.reason}" if d.reason else "")
    return Share(limits=limits, env=env, messages=(msg,) if msg else (), actions=actions,
                 offload_cpu_weight=weight, gpu=gpu)


def hide_gpus(hook, call):
    """Attach the device program to the call's cgroup before any of its processes runs
    there: the environment hides the GPUs from a call that reads it, this hides them
    from one that does not (an automatically detected call, or one that resets
    CUDA_VISIBLE_DEVICES). True if hidden."""
    if hook.devguard is None:
        return False
    agent_id, _, tool_id = call.key.partition("/")
    if hook.app.ctl.actuator.decided_only("hide the GPUs (device program)", f"tool {call.key}",
                                          "placed on the CPU", agent=agent_id, tool=tool_id):
        return False
    try:
        hook.devguard.hide(hook.app.fs.path(call.cgroup))
    except CgroupGone:
        return False
    except AgentdError as err:
        if str(err) != hook._guard_error:        # once per distinct failure, not per call
            log.warning("tool %s: cannot hide the GPUs from it (it sees them, CUDA_VISIBLE_DEVICES aside): %s",
                        call.key, err)
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
