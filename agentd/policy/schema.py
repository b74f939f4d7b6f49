"""The policy schema: frozen pydantic models a loaded policy is made of.

Sizes are resolved to bytes at load (None = unlimited, "max"); percentages of host memory are
resolved against the host memory given to the loader, so every later stage works in bytes.
Every model forbids unknown keys, so a misspelt key is an error at load instead of a silently
ignored limit.

This module holds what a call is matched by (Match, tool rules, detection), the classes, and
the Policy that ties them together; each resource's limit block is in resources.py, the
host-wide sections in sections.py.
"""

from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fields import (ClassName, DeclaredList, Model, OnlyProgramList, Priority, ProgramList, ProgramNames, Regex,
                     RuleName, Seconds, ranged_float)
from .resources import (AgentGpu, CpuLimits, IoLimits, MemoryLimits, NetworkLimits, PidsLimits, RuleGpu, ToolGpu,
                        ToolMemoryLimits)
from .sections import (Admission, CpuConfig, DaemonConfig, Defaults, Forecast, IoConfig, NetworkConfig, Pressure,
                       Reclaim)
from ..errors import RequestError

LATENCY_CLASSES = ("interactive", "normal", "batch")


def _no_name(v):
    # A class's name is its key in the mapping; a `name:` inside would silently lose.
    if v:
        raise ValueError("a class is named by its key; remove `name:` from inside it")
    return v


class AgentClass(Model):
    name: Annotated[str, AfterValidator(_no_name)] = Field(default="", exclude=True)  # = mapping key
    description: str = ""
    priority: Priority = 50
    memory: MemoryLimits = MemoryLimits()
    cpu: CpuLimits = CpuLimits()
    pids: PidsLimits = PidsLimits()
    kill_main_allowed: bool = False
    gpu: AgentGpu = AgentGpu()
    network: NetworkLimits = NetworkLimits()
    io: IoLimits = IoLimits()


class ToolClass(Model):
    name: Annotated[str, AfterValidator(_no_name)] = Field(default="", exclude=True)
    description: str = ""
    priority: Priority = 50
    latency: Literal["interactive", "normal", "batch"] = "normal"
    memory: ToolMemoryLimits = ToolMemoryLimits()
    cpu: CpuLimits = CpuLimits()
    pids: PidsLimits = PidsLimits()
    network: NetworkLimits = NetworkLimits()
    io: IoLimits = IoLimits()
    forecast: bool = True              # may adaptive limits move memory.high for this class
    stragglers: Literal["kill", "wait"] = "kill"   # processes left when the command ends
    straggler_grace_s: Seconds = 1.0
    device: Literal["cpu", "gpu", "auto"] = "auto"
    gpu: ToolGpu = ToolGpu()

    @model_validator(mode="after")
    def _prior_needs_a_gpu(self):
        if self.device == "cpu" and self.gpu.prior is not None:
            raise PydanticCustomError("policy_prior", "gpu.prior has no effect with device: cpu (its calls never "
                                      "use a GPU); remove it or set device: auto", {"subpath": "gpu"})
        return self


class Match(Model):
    """Conditions of a rule; all given conditions must hold, `any_of` holds if one branch does."""
    program: Optional[ProgramList] = None          # any program the call runs is listed
    only_programs: Optional[OnlyProgramList] = None  # every program it runs (shells, cd... aside) is listed
    argv_regex: Optional[Regex] = None
    declared_class: Optional[DeclaredList] = None  # the `agentd tool --class` value(s)
    any_of: Optional[list["Match"]] = None

    @field_validator("any_of")
    @classmethod
    def _nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("any_of is empty: give at least one match")
        return v

    @model_validator(mode="after")
    def _something(self):
        if not self.model_fields_set - {"any_of"} and not self.any_of:
            raise ValueError("match has no condition: give program, only_programs, argv_regex, declared_class or "
                             "any_of (calls no rule matches get defaults.tool_class)")
        return self


class ToolRule(Model):
    name: RuleName
    description: str = ""
    match: Match
    class_: str = Field(alias="class")
    memory: Optional[MemoryLimits] = None
    cpu: Optional[CpuLimits] = None
    pids: Optional[PidsLimits] = None
    gpu: Optional[RuleGpu] = None


# Children of a freshly started agent that are its own housekeeping, not tool calls
# (see /work/shared/AGENT-SPAWNING.md: Claude Code's shell snapshot and env probe,
# mini-swe-agent's platform probe).
DEFAULT_HOUSEKEEPING = (
    Match(argv_regex=r"^(/bin/|/usr/bin/)?(ba)?sh -c -l$"),
    Match(argv_regex=r"^(/bin/|/usr/bin/)?(ba)?sh -c env$"),
    Match(argv_regex=r"^(/bin/|/usr/bin/)?sh -c 'npm root -g'$"),
    Match(only_programs=["uname", "which"]),
)


class Detection(Model):
    enabled: bool = True
    new_session_only: bool = False     # count only children that lead a new session (setsid)
    startup_grace_s: Seconds = 0.0     # children in the agent's first seconds are housekeeping
    # Dead-man switch of stop-at-exec: a tool call is stopped at exec only while the
    # daemon's heartbeat is younger than this, and one stopped longer than this is resumed
    # by the exec watchdog even if the daemon is hung. A hung daemon never hangs an agent.
    stop_timeout_s: ranged_float(0.25, 60, "detection.stop_timeout_s") = 1.0
    # The agent's own programs: only children of a main-cgroup process whose executable or
    # argv[0] has one of these basenames are tool calls; children of the agent's other
    # processes (a language server, an npm helper) stay in main. [] = any main process.
    agent_programs: ProgramNames = []
    housekeeping: list[Match] = list(DEFAULT_HOUSEKEEPING)
    # Persistent shells (SWE-agent's SWE-ReX keeps one bash per agent and types each command
    # into it): a main-cgroup process whose argv matches one of these is the agent's shell.
    # It stays in main, and each command it runs is a tool call (agentd/monitor/shells.py).
    # [] = none: every child of an agent process is a tool call, a shell included.
    tool_parents: list[Match] = []


# Tool classes a policy without `tool_classes` gets.
BUILTIN_TOOL_CLASSES = {
    "interactive": {"priority": 80, "latency": "interactive", "cpu": {"weight": 200},
                    "straggler_grace_s": 0.5},
    "normal": {"priority": 50},
    "batch": {"priority": 20, "latency": "batch", "cpu": {"weight": 50}},
}


def _section():
    # An absent section is validated from {} (not a prebuilt default) so its sizes are
    # resolved against this load's host memory.
    return Field(default_factory=dict, validate_default=True)


class Policy(Model):
    version: int
    daemon: DaemonConfig = _section()
    defaults: Defaults = _section()
    agent_classes: dict[ClassName, AgentClass] = Field(
        default_factory=lambda: {"normal": {}}, validate_default=True)
    tool_classes: dict[ClassName, ToolClass] = Field(
        default_factory=lambda: dict(BUILTIN_TOOL_CLASSES), validate_default=True)
    tool_rules: list[ToolRule] = []
    detection: Detection = _section()
    forecast: Forecast = _section()
    pressure: Pressure = _section()
    admission: Admission = _section()
    reclaim: Reclaim = _section()
    cpu: CpuConfig = _section()
    network: NetworkConfig = _section()
    io: IoConfig = _section()

    _source: str = PrivateAttr(default="<policy>")
    _host_memory_bytes: Optional[int] = PrivateAttr(default=None)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v):
        if v != 1 or isinstance(v, bool):
            raise ValueError(f"unsupported policy version {v!r}: this agentd reads version 1")
        return v

    @field_validator("agent_classes", "tool_classes")
    @classmethod
    def _named(cls, v):
        if not v:
            raise ValueError("define at least one class")
        return {k: c.model_copy(update={"name": k}) for k, c in v.items()}

    @property
    def source(self):
        """Where the policy was read from (a path or a name)."""
        return self._source

    @property
    def host_memory_bytes(self):
        """The host memory percentages were resolved against."""
        return self._host_memory_bytes

    def agent_class(self, name=None):
        """The named agent class (None = defaults.agent_class); RequestError if unknown."""
        name = name or self.defaults.agent_class
        try:
            return self.agent_classes[name]
        except KeyError:
            raise RequestError("unknown_class", f"no agent class {name!r} in policy {self.source} "
                               f"(defined: {', '.join(sorted(self.agent_classes))})") from None

    def tool_class(self, name=None):
        """The named tool class (None = defaults.tool_class); RequestError if unknown."""
        name = name or self.defaults.tool_class
        try:
            return self.tool_classes[name]
        except KeyError:
            raise RequestError("unknown_class", f"no tool class {name!r} in policy {self.source} "
                               f"(defined: {', '.join(sorted(self.tool_classes))})") from None
