"""The policy schema: frozen pydantic models a loaded policy is made of.

Sizes are resolved to bytes at load (None = unlimited, "max"); percentages of host memory are
resolved against the host memory given to the loader, so every later stage works in bytes.
CPU maxima are fractions of one CPU (2.0 = "200%"). Every model forbids unknown keys, so a
misspelt key is an error at load instead of a silently ignored limit.

Limits blocks (memory, cpu, pids) double as overrides in tool rules: only the keys a rule
writes replace the class's values (`model_fields_set` tells which were written).
"""

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fields import (AbsPath, BlockDeviceSpec, ByteRate, ClassName, CpuAmount, DeclaredList, GpuSize, Iops,
                     ListenAddr, OnlyProgramList, Rate,
                     PidsMax, Priority, ProgramList, ProgramNames, Regex, RuleName, Seconds, Size,
                     Weight, ranged_float, ranged_int)
from ..errors import RequestError
from ..units import format_size, parse_size

LADDER_STEPS = ("throttle", "freeze", "kill")
LATENCY_CLASSES = ("interactive", "normal", "batch")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _no_name(v):
    # A class's name is its key in the mapping; a `name:` inside would silently lose.
    if v:
        raise ValueError("a class is named by its key; remove `name:` from inside it")
    return v


def _order_error(sub, lo_name, lo, hi_name, hi):
    # `sub` extends the error's key path so the message points at the offending key's line.
    return PydanticCustomError(
        "policy_order", "{lo_name} ({lo}) must not exceed {hi_name} ({hi})",
        {"subpath": sub, "lo_name": lo_name, "lo": format_size(lo), "hi_name": hi_name,
         "hi": format_size(hi)})


class MemoryLimits(_Model):
    """cgroup memory.min/low/high/max in bytes; None = "max" (no limit)."""
    min: Size = 0
    low: Size = 0
    high: Size = None
    max: Size = None

    @model_validator(mode="after")
    def _ordered(self):
        # Only keys the author wrote are compared: `{max: 1Gi}` leaves high unset, not "max".
        keys = [k for k in ("min", "low", "high", "max") if k in self.model_fields_set]
        for i, lo_key in enumerate(keys):
            for hi_key in keys[i + 1:]:
                lo, hi = getattr(self, lo_key), getattr(self, hi_key)
                # "max" below a number is allowed: `{high: max, max: 2Gi}` means no throttle
                # point, and enforcement caps every value at memory.max.
                if lo is not None and hi is not None and lo > hi:
                    raise _order_error(hi_key, f"memory.{lo_key}", lo, f"memory.{hi_key}", hi)
        return self


class ToolMemoryLimits(MemoryLimits):
    """A tool class's memory: MemoryLimits, and the swap its calls may use (memory.swap.max,
    and memory.zswap.max where the kernel has it) in bytes; None = "max" (no limit).

    0 by default: a tool call past its memory.high is meant to be slowed by reclaim and seen
    by the pressure ladder. With swap its pages go out instead, its memory.current drops
    while it thrashes, and the whole host's disk pays for it. Written only where the host
    has swap (agentd/swap/)."""
    swap_max: Size = 0


class CpuLimits(_Model):
    weight: Weight = 100
    max: CpuAmount = None          # CPUs; None = no quota


class PidsLimits(_Model):
    max: PidsMax = None


def _ifname(v):
    # The kernel's rule for interface names (dev_valid_name): 1-15 bytes, no '/', ':' or space.
    if not isinstance(v, str) or not 0 < len(v.encode()) <= 15 or v in (".", "..") \
            or any(c in v for c in "/: \t\n"):
        raise ValueError(f"{v!r} is not a network interface name (1-15 characters, no '/', ':' or space)")
    return v


class NetworkLimits(_Model):
    """Egress of an agent (all its processes together) or of one tool call, on the devices
    `network.devices` names. None = no limit."""
    egress: Rate = None                # bytes/s, from '20Mbit', '2MB/s' or 'max'
    burst: Size = 256 * 1024           # sent at once after a pause, above the rate


class IoLimits(_Model):
    """Disk I/O of an agent (all its processes together) or of one tool call.

    `weight` is its share of each disk against its siblings' (io.weight, and io.bfq.weight
    on bfq disks: agents against agents, a call against its agent's other calls); None
    leaves the kernel's 100. The maxima are io.max on every disk `io.devices` names, per
    second; None = no limit. An agent's maxima bound its calls too (the kernel's io.max
    holds down the tree)."""
    weight: Optional[ranged_int(1, 10000, "io weight")] = None
    rbps: ByteRate = None              # read bytes/s, from '20MiB/s', '50M/s' or 'max'
    wbps: ByteRate = None              # written bytes/s
    riops: Iops = None                 # read operations/s
    wiops: Iops = None                 # write operations/s

    def maxima(self):
        """(rbps, wbps, riops, wiops), or None when none is set."""
        m = (self.rbps, self.wbps, self.riops, self.wiops)
        return None if all(v is None for v in m) else m


class AgentGpu(_Model):
    memory_budget: GpuSize = "max"   # bytes, "50%" of a GPU's memory, or "max"
    priority: Priority = 50
    over_budget: Literal["notify", "kill"] = "notify"   # applied to the agent's lowest-priority GPU call

    def budget_bytes(self, gpu_total_bytes):
        """The budget in bytes for a GPU of `gpu_total_bytes`; None = unlimited."""
        return parse_size(self.memory_budget, gpu_total_bytes)


class AgentClass(_Model):
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


def _prior(v):
    # A prior is a figure for one call's GPU memory: a size or a share of a GPU, never "max"
    # (that would reserve a whole device for every call of the class) and never 0.
    if v is not None and (str(v).strip().lower() == "max" or not parse_size(v, 1 << 40)):
        raise ValueError(f"gpu.prior must be a size like '4Gi' or a share of a GPU like '25%', not {v!r}")
    return v


GpuPrior = Annotated[Optional[GpuSize], AfterValidator(_prior)]


class ToolGpu(_Model):
    fallback: Literal["offload", "wait"] = "offload"   # when no GPU has room
    offload_cpu_weight: Optional[Weight] = None        # cpu.weight given to a call offloaded to CPU
    mps_active_thread_percentage: Optional[ranged_int(1, 100, "MPS thread percentage")] = None
    mps_pinned_mem_limit: Optional[GpuSize] = None
    # GPU memory a call is assumed to need while its command has no GPU history. With one,
    # `device: auto` calls are placed (and may be offloaded) from their first run; without,
    # they are left alone until they have held GPU memory once. `device: gpu` calls use it
    # instead of the built-in prior (agentd/gpu/history.py PRIOR_BYTES).
    prior: GpuPrior = None


class RuleGpu(_Model):
    prior: GpuPrior                    # the rule's calls' prior, replacing their class's


class ToolClass(_Model):
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


class Match(_Model):
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


class ToolRule(_Model):
    name: RuleName
    description: str = ""
    match: Match
    class_: str = Field(alias="class")
    memory: Optional[MemoryLimits] = None
    cpu: Optional[CpuLimits] = None
    pids: Optional[PidsLimits] = None
    gpu: Optional[RuleGpu] = None


class DaemonConfig(_Model):
    root: str = "auto"                 # "auto" = the cgroup systemd delegated, else an absolute path
    socket: AbsPath = "/run/agentd/agentd.sock"
    api_group: str = "agentd"
    metrics_listen: ListenAddr = "127.0.0.1:9464"   # "" / off = no metrics endpoint
    state_dir: AbsPath = "/var/lib/agentd"
    event_log: AbsPath = "/var/log/agentd/events.jsonl"
    # What one caller may hold of the daemon (every local user can reach its socket):
    # open API connections per uid (root is bounded only by the total), and tool calls one
    # agent may have running or waiting at once (its cgroup's cgroup.max.descendants
    # follows, so the kernel holds the bound for every path that makes cgroups).
    max_connections_per_uid: ranged_int(4, 100_000, "daemon.max_connections_per_uid") = 256
    max_tool_calls_per_agent: ranged_int(1, 100_000, "daemon.max_tool_calls_per_agent") = 128
    # A connection that sends no request within first_request_timeout_s, or none for
    # idle_timeout_s while it has no tool call or agent of its own, is closed.
    first_request_timeout_s: ranged_float(0.1, 3600, "daemon.first_request_timeout_s") = 10.0
    idle_timeout_s: ranged_float(1, 86_400, "daemon.idle_timeout_s") = 120.0

    @field_validator("root")
    @classmethod
    def _root(cls, v):
        if v != "auto" and not v.startswith("/"):
            raise ValueError(f"daemon.root must be 'auto' or an absolute cgroup path, not {v!r}")
        return v

    @field_validator("api_group")
    @classmethod
    def _group(cls, v):
        if not re.match(r"^[a-z_][a-z0-9_-]{0,31}\$?$", v):
            raise ValueError(f"bad group name {v!r}")
        return v


class Defaults(_Model):
    agent_class: str = "normal"
    tool_class: str = "normal"
    honour_declared_class: bool = True   # `agentd tool --class C` picks C when no rule matches


# Children of a freshly started agent that are its own housekeeping, not tool calls
# (see /work/shared/AGENT-SPAWNING.md: Claude Code's shell snapshot and env probe,
# mini-swe-agent's platform probe).
DEFAULT_HOUSEKEEPING = (
    Match(argv_regex=r"^(/bin/|/usr/bin/)?(ba)?sh -c -l$"),
    Match(argv_regex=r"^(/bin/|/usr/bin/)?(ba)?sh -c env$"),
    Match(argv_regex=r"^(/bin/|/usr/bin/)?sh -c 'npm root -g'$"),
    Match(only_programs=["uname", "which"]),
)


class Detection(_Model):
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


class Forecast(_Model):
    predictor: str = "default"
    headroom: ranged_float(1.0, 100.0, "forecast.headroom") = 1.5
    min_high: Size = 64 * 2**20
    quantile: ranged_float(0.0, 1.0, "forecast.quantile", lo_open=True) = 0.9

    @field_validator("predictor")
    @classmethod
    def _predictor(cls, v):
        if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", v):
            raise ValueError(f"bad predictor name {v!r}")
        return v


class Pressure(_Model):
    # The kernel accepts PSI trigger windows of 0.5..10 s; without CAP_SYS_RESOURCE only
    # multiples of 2 s, hence the default window.
    psi_some_threshold_us: ranged_int(1, 10_000_000, "psi_some_threshold_us") = 200_000
    psi_window_us: ranged_int(500_000, 10_000_000, "psi_window_us") = 2_000_000
    steps: list[str] = list(LADDER_STEPS)
    step_interval_s: ranged_float(0.0, None, "step_interval_s", lo_open=True) = 2.0
    relief_interval_s: ranged_float(0.0, None, "relief_interval_s", lo_open=True) = 5.0
    throttle_factor: ranged_float(0.0, 1.0, "throttle_factor", lo_open=True, hi_open=True) = 0.5
    # Memory that tool calls' forecast peaks may add up to before admission makes calls wait.
    budget: Size = Field(default="90%", validate_default=True)
    # The BPF memory watch as a second pressure source, faster than PSI: a tool call whose
    # growth would use up the shared memory left (the host's MemAvailable, or what
    # agentd's own limit leaves) within memory_watch_horizon_s is pressure at once, and while
    # that growth lasts the ladder steps as often as the watch reports (every 0.25 s), not
    # every step_interval_s. false: the ladder answers PSI alone.
    memory_watch: bool = True
    memory_watch_horizon_s: ranged_float(0.0, 60.0, "memory_watch_horizon_s", lo_open=True) = 2.0

    @field_validator("steps")
    @classmethod
    def _steps(cls, v):
        if not v:
            raise ValueError("steps is empty: give at least one of throttle, freeze, kill")
        for s in v:
            if s not in LADDER_STEPS:
                raise ValueError(f"unknown ladder step {s!r}: expected one of {', '.join(LADDER_STEPS)}")
        dup = [s for s in set(v) if v.count(s) > 1]
        if dup:
            raise ValueError(f"ladder step {dup[0]!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _threshold_in_window(self):
        if self.psi_some_threshold_us > self.psi_window_us:
            raise PydanticCustomError(
                "policy_order", "psi_some_threshold_us ({t}) must not exceed psi_window_us ({w})",
                {"subpath": "psi_some_threshold_us", "t": self.psi_some_threshold_us,
                 "w": self.psi_window_us})
        return self


class Admission(_Model):
    enabled: bool = True
    max_wait_s: Seconds = 60.0
    on_timeout: Literal["run", "fail"] = "run"


class Reclaim(_Model):
    """Idle agents' memory given back while they wait for their model (agentd/reclaim/):
    memory.reclaim on an agent's own cgroup (never a tool call's) in steps, while the
    agent's memory pressure stays low (senpai / TMO). Anonymous pages go to swap (zram or
    zswap where the host has it; the swap stage keeps tool calls' swap at 0), page cache
    is dropped."""
    enabled: bool = True
    idle_s: Seconds = 1.0                 # no tool call running for this long: the agent waits
    interval_s: ranged_float(0.0, None, "reclaim.interval_s", lo_open=True) = 1.0
    step_percent: ranged_float(0.0, 100.0, "reclaim.step_percent", lo_open=True) = 10.0   # of its memory.current
    max_step: Size = 32 * 2**20           # bytes per write: memory.reclaim runs in the daemon's loop
    floor: Size = 4 * 2**20               # an agent holding less is left alone
    # Stop (for backoff_s) when the agent stalled on memory more than this share of the
    # last interval: it is faulting back what was taken, so the rest is its working set.
    pressure_max_percent: ranged_float(0.0, 100.0, "reclaim.pressure_max_percent") = 1.0
    backoff_s: Seconds = 10.0


class LatencySlices(_Model):
    interactive: ranged_int(50, 1_000_000, "slice_us") = 1_000
    normal: ranged_int(50, 1_000_000, "slice_us") = 5_000
    batch: ranged_int(50, 1_000_000, "slice_us") = 20_000


class CpuConfig(_Model):
    scheduler: Literal["auto", "sched_ext", "weights", "none"] = "auto"
    slice_us: LatencySlices = LatencySlices()
    retry_backoff_s: ranged_float(0.0, None, "retry_backoff_s", lo_open=True) = 5.0


class NetworkConfig(_Model):
    # The egress devices agentd shapes (e.g. [eth0]); none: no network control. agentd
    # sets fq (or htb, where the kernel has no fq or no BPF program can run) as their root
    # qdisc and refuses a device whose root qdisc someone else configured. mode: fq and htb
    # classify with the egress BPF program, nft with nftables rules (no BPF).
    devices: list[Annotated[str, AfterValidator(_ifname)]] = []
    mode: Literal["auto", "fq", "htb", "nft"] = "auto"   # auto: fq where the kernel has it, nft without BPF


class IoConfig(_Model):
    # The disks the classes' io maxima (rbps, wbps, riops, wiops) are written for: a path
    # (its file system's disk; a partition's disk) or "major:minor". Weights need none.
    devices: list[BlockDeviceSpec] = []
    # Turn iocost on for each named disk that has no weight-based sharing (no iocost, no
    # bfq), so that io.weight counts there; agentd turns it off again when it stops.
    enable_iocost: bool = True
    # A higher-priority agent stalled on I/O for over this many µs in a pressure window
    # (its io.pressure `some`) while a lower-priority call reads or writes: that call is
    # pressure on the ladder, named as the reason. None: I/O is no ladder reason.
    ladder_stall_us: Optional[ranged_int(1, 10_000_000, "io.ladder_stall_us")] = None


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


class Policy(_Model):
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
