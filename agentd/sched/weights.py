"""From policy to CPU priorities: pure functions, no I/O.

One weight scale for every mode: cgroup v2's cpu.weight (1..10000, default 100).
- An agent's weight is its class's `cpu.weight` when the policy sets one, else it is
  derived from the class's `priority` (2 x priority, so the default 50 gives 100).
- A tool call's weight (among the cgroups of its agent) is the cpu.weight its class and
  rule resolve to, else derived from its priority the same way; a call the GPU stage sent
  to the CPU instead of a GPU gets its class's `gpu.offload_cpu_weight` instead.
- The agent's own process (its `main` cgroup) is interactive with the default weight.
The same numbers go into the sched_ext maps, into cpu.weight files (fallback), or,
without a cpu controller, into nice values.
"""

import dataclasses
import math

from ..kernel import bpf_scx_types as contract

MAIN_LATENCY = "interactive"
NICE_STEP = 1.25        # the kernel's weight table: each nice level is ~1.25x the weight


@dataclasses.dataclass(frozen=True)
class CgroupPrio:
    """What agentd schedules by, for one cgroup (an agent's main or a tool call)."""
    cgroup: str             # relative to the v2 mount
    agent_cgroup: str       # the agent's own cgroup (parent level of the weights)
    slot: int               # the agent's slot
    weight: int             # among the agent's cgroups
    latency: str            # interactive | normal | batch
    agent_weight: int       # the agent's weight among agents

    @property
    def effective_weight(self):
        """The flattened weight (agent x cgroup), for modes without a hierarchy (nice)."""
        return max(1, self.agent_weight * self.weight // contract.WEIGHT_DFL)


def weight_from_priority(priority):
    return clamp_weight(2 * int(priority))


def clamp_weight(w):
    return max(1, min(10000, int(w)))


def _explicit_weight(cpu_limits):
    if cpu_limits is None or "weight" not in getattr(cpu_limits, "model_fields_set", ()):
        return None
    return cpu_limits.weight


def agent_weight(policy, agent):
    cls = policy.agent_classes.get(agent.agent_class)
    w = _explicit_weight(cls.cpu) if cls is not None else None
    return clamp_weight(w) if w is not None else weight_from_priority(agent.priority)


def tool_weight(policy, tool):
    """The tool call's weight: the GPU stage's offload weight for a call it sent to the CPU,
    else its rule's cpu.weight, else its class's, else from priority."""
    offload = getattr(tool, "offload_cpu_weight", None)
    if offload is not None:
        # The call was meant for a GPU and runs its work on CPUs instead: the policy's
        # offload weight replaces the class's, in every mode (sched_ext map, cpu.weight, nice).
        return clamp_weight(offload)
    plan = tool.plan
    rule = next((r for r in policy.tool_rules if plan.rule and r.name == plan.rule), None)
    w = _explicit_weight(rule.cpu) if rule is not None else None
    if w is None:
        cls = policy.tool_classes.get(plan.tool_class)
        w = _explicit_weight(cls.cpu) if cls is not None else None
    return clamp_weight(w) if w is not None else weight_from_priority(plan.priority)


def tool_latency(tool):
    lat = getattr(tool.plan, "latency", "normal")
    return lat if lat in contract.LATENCY else "normal"


def nice_for_weight(weight):
    """Nice value giving `weight` relative to nice 0 (= weight 100). Never below 0: agentd
    may lower agent work under the host's services, never raise it above them."""
    nice = round(math.log(contract.WEIGHT_DFL / max(1, weight)) / math.log(NICE_STEP))
    return max(0, min(19, nice))


def slices_ns(cpu_config):
    """Slice per latency class, in the contract's order, from the policy's cpu.slice_us."""
    s = cpu_config.slice_us
    return (s.interactive * 1000, s.normal * 1000, s.batch * 1000)


class SlotTable:
    """Agent -> scheduler slot (1..MAX_AGENTS-1). Slot 0 is shared by everything the
    scheduler does not know, and by agents beyond the table's size."""

    def __init__(self, size=contract.MAX_AGENTS):
        self.size = size
        self.by_agent = {}

    def take(self, agent_id):
        if agent_id in self.by_agent:
            return self.by_agent[agent_id]
        used = set(self.by_agent.values())
        for slot in range(1, self.size):
            if slot not in used:
                self.by_agent[agent_id] = slot
                return slot
        return 0

    def release(self, agent_id):
        return self.by_agent.pop(agent_id, None)
