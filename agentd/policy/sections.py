"""The policy's host-wide sections: how the daemon runs (daemon, defaults) and how each
of its stages behaves (forecast, pressure, admission, reclaim, cpu, network, io).

The class-level limits are in resources.py; which calls a rule or detection picks, and the
Policy that holds it all, in schema.py.
"""

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fields import AbsPath, BlockDeviceSpec, ListenAddr, Model, Seconds, Size, ranged_float, ranged_int

LADDER_STEPS = ("throttle", "freeze", "kill")


def _ifname(v):
    # The kernel's rule for interface names (dev_valid_name): 1-15 bytes, no '/', ':' or space.
    if not isinstance(v, str) or not 0 < len(v.encode()) <= 15 or v in (".", "..") \
            or any(c in v for c in "/: \t\n"):
        raise ValueError(f"{v!r} is not a network interface name (1-15 characters, no '/', ':' or space)")
    return v


class DaemonConfig(Model):
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


class Defaults(Model):
    agent_class: str = "normal"
    tool_class: str = "normal"
    honour_declared_class: bool = True   # `agentd tool --class C` picks C when no rule matches


class Forecast(Model):
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


class Pressure(Model):
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


class Admission(Model):
    enabled: bool = True
    max_wait_s: Seconds = 60.0
    on_timeout: Literal["run", "fail"] = "run"


class Reclaim(Model):
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


class LatencySlices(Model):
    interactive: ranged_int(50, 1_000_000, "slice_us") = 1_000
    normal: ranged_int(50, 1_000_000, "slice_us") = 5_000
    batch: ranged_int(50, 1_000_000, "slice_us") = 20_000


class CpuConfig(Model):
    scheduler: Literal["auto", "sched_ext", "weights", "none"] = "auto"
    slice_us: LatencySlices = LatencySlices()
    retry_backoff_s: ranged_float(0.0, None, "retry_backoff_s", lo_open=True) = 5.0


class NetworkConfig(Model):
    # The egress devices agentd shapes (e.g. [eth0]); none: no network control. agentd
    # sets fq (or htb, where the kernel has no fq or no BPF program can run) as their root
    # qdisc and refuses a device whose root qdisc someone else configured. mode: fq and htb
    # classify with the egress BPF program, nft with nftables rules (no BPF).
    devices: list[Annotated[str, AfterValidator(_ifname)]] = []
    mode: Literal["auto", "fq", "htb", "nft"] = "auto"   # auto: fq where the kernel has it, nft without BPF


class IoConfig(Model):
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
