"""The policy front the controller asks: limits for an agent class, a plan for a tool call.

It turns the typed policy (agentd.policy) into cgroupfs values. Pure: no I/O.
"""

from ..errors import AgentdError, RequestError
from ..kernel import cgroupfs as cgf
from ..model import ToolPlan
from .match import ToolLimits, classify_tool
from ..units import parse_size


# Decisions kept per planner (a reload makes a new one), at most this many.
DECISIONS_KEPT = 1024


class Planner:
    def __init__(self, policy, host_memory=None):
        self.policy = policy
        self.host_memory = host_memory
        # classify_tool is pure over this policy, and costs a regex pass over the rules;
        # a call is planned once (agentd/pipeline.py), but agents repeat their commands.
        self._decisions = {}

    def agent_limits(self, class_name=None):
        name = class_name or self.policy.defaults.agent_class
        cls = self.policy.agent_class(name)        # RequestError("unknown_class") if unknown
        # An agent's limits are written exactly as a tool call's: one conversion to files.
        limits = ToolLimits(memory_min=cls.memory.min, memory_low=cls.memory.low, memory_high=cls.memory.high,
                            memory_max=cls.memory.max, cpu_weight=cls.cpu.weight, cpu_max=cls.cpu.max,
                            pids_max=cls.pids.max)
        return name, cls.priority, cgf.limit_values(limits)

    def plan_tool(self, agent, argv, declared_class=None, mem=None):
        if mem is not None:
            try:
                mem_bytes = parse_size(mem, self.host_memory)
            except AgentdError as err:
                raise RequestError("bad_field", f"--mem: {err}") from None
        else:
            mem_bytes = None
        try:
            key = (tuple(argv), declared_class, mem_bytes)
            d = self._decisions.get(key)
        except TypeError:         # an unhashable argv item: classify_tool refuses it below
            key = d = None
        if d is None:
            try:
                d = classify_tool(self.policy, argv, declared_class=declared_class, mem_override=mem_bytes)
            except AgentdError as err:
                raise RequestError("bad_class", str(err)) from None
            if key is not None:
                if len(self._decisions) >= DECISIONS_KEPT:
                    self._decisions.clear()
                self._decisions[key] = d
        plan = ToolPlan(tool_class=d.class_name, priority=d.priority, limits=cgf.limit_values(d.limits),
                        rule=d.rule_name, stragglers=d.stragglers, straggler_grace_s=d.straggler_grace_s,
                        latency=d.latency, decision=d)
        return plan
