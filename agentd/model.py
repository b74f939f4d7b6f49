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


@dataclasses.dataclass(slots=True, eq=False)
class ToolRun:
    """What changes about a tool call while it runs, kept apart from the call's frozen
    snapshot. Its owners write it, nobody else: the controller (the call's life: its
    process, cgroup id, re-classified plan, limits written, memory peak, end, exit status,
    a launcher gone) and the actuator (actions taken, frozen). Everyone else reads it
    through the ToolCall's properties."""
    plan: ToolPlan
    pid: int | None = None
    cgroup_id: int | None = None
    peak_sample: int = 0              # highest memory sample seen (bytes)
    actions: list = dataclasses.field(default_factory=list)   # enforcement actions taken
    limits_applied: dict = dataclasses.field(default_factory=dict)
    frozen: bool = False
    done: bool = False
    # The exit status the kernel reported for a call detected automatically (no launcher
    # reports one), and when a launcher's connection went away (it may reconnect).
    exit_status: dict | None = None
    orphaned_since: float | None = None


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(ToolRun))


# Frozen, with slots: a ToolCall is a snapshot of what was decided when it started (its
# identity, command line, forecast and Placement); nothing can be set on it, and a stage
# cannot hang its own state on it (it keeps that itself, keyed by the call's key). What
# changes while it runs is its ToolRun, written only by that record's owners.
@dataclasses.dataclass(slots=True, init=False, eq=False)
class ToolCall:
    agent_id: str
    tool_id: str                      # "<seq>-<class>", unique within its agent
    cgroup: str                       # relative to the v2 mount
    argv: list
    origin: str
    intent: str | None
    started: float
    started_mono: float
    forecast: object
    # The cpu.weight the GPU stage asks for a call it sent to the CPU instead of a GPU
    # (the class's gpu.offload_cpu_weight); the CPU stage owns cpu.weight and applies it.
    offload_cpu_weight: int | None
    placement: Placement
    run: ToolRun

    def __init__(self, agent_id, tool_id, cgroup, argv, plan=None, origin="launcher", intent=None, started=None,
                 started_mono=None, forecast=None, offload_cpu_weight=None, placement=None, run=None, **fields):
        """`run`: an existing ToolRun (dataclasses.replace keeps the call's record); else
        one is made from `plan` and the ToolRun `fields` given (pid, cgroup_id, ...)."""
        unknown = set(fields) - set(_RUN_FIELDS)
        if unknown:
            raise TypeError(f"ToolCall has no field {sorted(unknown)[0]!r}")
        if run is None:
            run = ToolRun(plan=plan, **fields)
        for k, v in (("agent_id", agent_id), ("tool_id", tool_id), ("cgroup", cgroup), ("argv", argv),
                     ("origin", origin), ("intent", intent),
                     ("started", time.time() if started is None else started),
                     ("started_mono", time.monotonic() if started_mono is None else started_mono),
                     ("forecast", forecast), ("offload_cpu_weight", offload_cpu_weight),
                     ("placement", Placement() if placement is None else placement),
                     ("run", run)):
            object.__setattr__(self, k, v)

    # (frozen=True cannot be combined with slots and a hand-written __init__ here: the
    # generated __setattr__ calls super() on the class slots=True replaced.)
    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: a ToolCall is a snapshot; "
                                              "its changing state is its ToolRun, written by its owners")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    # --- the running record, read-only here -----------------------------------------
    plan = property(lambda self: self.run.plan, doc="the plan (a re-classification replaces it)")
    pid = property(lambda self: self.run.pid)
    cgroup_id = property(lambda self: self.run.cgroup_id)
    peak_sample = property(lambda self: self.run.peak_sample)
    actions = property(lambda self: self.run.actions)
    limits_applied = property(lambda self: self.run.limits_applied)
    frozen = property(lambda self: self.run.frozen)
    done = property(lambda self: self.run.done)
    exit_status = property(lambda self: self.run.exit_status)
    orphaned_since = property(lambda self: self.run.orphaned_since)

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


# Slots: an Agent has the fields declared here and no others, so a stage cannot hang its
# own state on it.
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
