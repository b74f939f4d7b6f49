"""Plain data exchanged between agentd's stages (controller, enforcer, API, metrics)."""

import dataclasses
import time
import types


@dataclasses.dataclass(frozen=True)
class ToolPlan:
    """What the policy decided for one tool call before it starts (the class's own
    limits; what the stages add to them is in the call's Placement)."""
    tool_class: str
    priority: int
    limits: dict            # cgroupfs file -> value (bytes / "max" / weight / "quota period")
    rule: str | None = None
    stragglers: str = "kill"          # kill | wait
    straggler_grace_s: float = 0.5
    latency: str = "normal"
    # The classification behind it (policy.match.ToolDecision: device, gpu, forecast on/off),
    # None for a call re-adopted from the state journal.
    decision: object = dataclasses.field(default=None, compare=False, repr=False)


EMPTY = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Placement:
    """Everything a tool call gets before it runs, decided once by the pipeline
    (agentd/pipeline.py) and applied by the controller: the limits to write (the class's,
    with what each stage added: memory.high from the forecast, an offloaded call's
    cpu.weight, ...), the environment and the sentences for the launcher, the actions
    taken while it was admitted (a wait in a queue), and each stage's own record."""
    limits: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)
    env: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)
    messages: tuple = ()
    actions: tuple = ()
    forecast: object = None           # the memory forecast (agentd.forecast.Forecast)
    offload_cpu_weight: int | None = None
    gpu: types.MappingProxyType | None = None    # the GPU stage's decision, for status and tests


# Slots: a ToolCall or an Agent has the fields declared here and no others, so a stage
# cannot hang its own state on them (it keeps that itself, keyed by the call's key).
@dataclasses.dataclass(slots=True)
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
    placement: Placement = dataclasses.field(default_factory=Placement)
    # The exit status the kernel reported for a call detected automatically (no launcher
    # reports one), and when a launcher's connection went away (it may reconnect).
    exit_status: dict | None = None
    orphaned_since: float | None = None

    @property
    def env(self):
        return dict(self.placement.env)

    @property
    def messages(self):
        return list(self.placement.messages)

    @property
    def gpu_placement(self):
        return None if self.placement.gpu is None else dict(self.placement.gpu)

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


@dataclasses.dataclass(slots=True)
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
    argv: list = dataclasses.field(default_factory=list)   # the agent's own command line
    # No `agentd run` is connected (re-adopted, or its connection dropped): the sweep
    # ends the agent once its processes are gone.
    detached: bool = False

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
