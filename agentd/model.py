"""Plain data exchanged between agentd's stages (controller, enforcer, API, metrics)."""

import dataclasses
import time


@dataclasses.dataclass
class ToolPlan:
    """What the policy decided for one tool call before it starts."""
    tool_class: str
    priority: int
    limits: dict            # cgroupfs file -> value (bytes / "max" / weight / "quota period")
    rule: str | None = None
    stragglers: str = "kill"          # kill | wait
    straggler_grace_s: float = 0.5
    latency: str = "normal"


@dataclasses.dataclass
class ToolCall:
    agent_id: str
    tool_id: str                      # "<seq>-<class>", unique within its agent
    cgroup: str                       # relative to the v2 mount
    argv: list
    plan: ToolPlan
    origin: str = "launcher"          # launcher | auto | adopted
    intent: str | None = None
    pid: int | None = None
    started: float = dataclasses.field(default_factory=time.time)
    started_mono: float = dataclasses.field(default_factory=time.monotonic)
    cgroup_id: int | None = None
    peak_sample: int = 0              # highest memory sample seen (bytes)
    forecast: object = None
    actions: list = dataclasses.field(default_factory=list)   # enforcement actions taken
    limits_applied: dict = dataclasses.field(default_factory=dict)
    frozen: bool = False
    done: bool = False
    # The cpu.weight the GPU stage asks for a call it sent to the CPU instead of a GPU
    # (the class's gpu.offload_cpu_weight); the CPU stage owns cpu.weight and applies it.
    offload_cpu_weight: int | None = None

    @property
    def key(self):
        return f"{self.agent_id}/{self.tool_id}"

    def to_state(self):
        return {
            "agent": self.agent_id, "tool": self.tool_id, "argv": self.argv,
            "class": self.plan.tool_class, "priority": self.plan.priority, "origin": self.origin,
            "intent": self.intent, "pid": self.pid, "started": self.started,
            "limits": self.limits_applied, "stragglers": self.plan.stragglers,
            "offload_cpu_weight": self.offload_cpu_weight,
        }


@dataclasses.dataclass
class Agent:
    agent_id: str
    cgroup: str                       # agents/<id>
    agent_class: str
    priority: int
    uid: int = 0
    policy: str | None = None
    created: float = dataclasses.field(default_factory=time.time)
    main_pids: set = dataclasses.field(default_factory=set)
    next_seq: int = 1
    tools: dict = dataclasses.field(default_factory=dict)     # tool_id -> ToolCall
    limits_applied: dict = dataclasses.field(default_factory=dict)
    standalone: bool = False
    # The agent's own policy under the daemon's (policy/overlay.py): its text, as sent, and
    # the Policy it runs under with the Planner made from it; None = the daemon's policy.
    policy_text: str | None = None
    view: object = None
    planner: object = None

    @property
    def main_cgroup(self):
        return f"{self.cgroup}/main"

    @property
    def tools_cgroup(self):
        return f"{self.cgroup}/tools"

    def to_state(self):
        return {
            "agent": self.agent_id, "class": self.agent_class, "priority": self.priority,
            "uid": self.uid, "policy": self.policy, "created": self.created, "next_seq": self.next_seq,
            **({"policy_text": self.policy_text} if self.policy_text is not None else {}),
        }
