"""The policy front the controller asks: limits for an agent class, a plan for a tool call.

It turns the typed policy (agentd.policy) into cgroupfs values. Pure: no I/O.
"""

from .errors import AgentdError, RequestError
from .kernel import cgroupfs as cgf
from .model import ToolPlan
from .units import parse_size

CPU_PERIOD_US = 100_000


def _mem_limits(mem):
    """memory section (resolved bytes or None=max) -> cgroupfs files."""
    out = {}
    if mem is None:
        return out
    for key, fname in (("min", cgf.MEMORY_MIN), ("low", cgf.MEMORY_LOW),
                       ("high", cgf.MEMORY_HIGH), ("max", cgf.MEMORY_MAX)):
        val = getattr(mem, key, None) if not isinstance(mem, dict) else mem.get(key)
        if val is None:
            if key in ("high", "max"):
                out[fname] = "max"
            continue
        out[fname] = int(val)
    return out


def _cpu_limits(cpu):
    out = {}
    if cpu is None:
        return out
    weight = getattr(cpu, "weight", None)
    if weight is not None:
        out[cgf.CPU_WEIGHT] = int(weight)
    cmax = getattr(cpu, "max", None)
    out[cgf.CPU_MAX] = "max" if cmax is None else f"{int(cmax * CPU_PERIOD_US)} {CPU_PERIOD_US}"
    return out


def _pids_limits(pids):
    if pids is None:
        return {}
    m = getattr(pids, "max", None)
    return {cgf.PIDS_MAX: "max" if m is None else int(m)}


class Planner:
    def __init__(self, policy, host_memory=None):
        self.policy = policy
        self.host_memory = host_memory

    def agent_limits(self, class_name=None):
        name = class_name or self.policy.defaults.agent_class
        cls = self.policy.agent_class(name)        # RequestError("unknown_class") if unknown
        limits = {}
        limits.update(_mem_limits(cls.memory))
        if cls.memory.min:
            limits[cgf.MEMORY_MIN] = int(cls.memory.min)
        if cls.memory.low:
            limits[cgf.MEMORY_LOW] = int(cls.memory.low)
        limits.update(_cpu_limits(cls.cpu))
        limits.update(_pids_limits(cls.pids))
        return name, cls.priority, limits

    def plan_tool(self, agent, argv, declared_class=None, mem=None):
        from .policy.match import classify_tool
        if mem is not None:
            try:
                mem_bytes = parse_size(mem, self.host_memory)
            except AgentdError as err:
                raise RequestError("bad_field", f"--mem: {err}") from None
        else:
            mem_bytes = None
        try:
            d = classify_tool(self.policy, argv, declared_class=declared_class, mem_override=mem_bytes)
        except AgentdError as err:
            raise RequestError("bad_class", str(err)) from None
        limits = d.limits.cgroup_values()
        plan = ToolPlan(tool_class=d.class_name, priority=d.priority, limits=limits, rule=d.rule_name,
                        stragglers=d.stragglers, straggler_grace_s=d.straggler_grace_s, latency=d.latency)
        plan.decision = d
        return plan
