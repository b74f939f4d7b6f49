"""The policy's limit blocks, one per resource: what an agent class, a tool class or a tool
rule sets for memory, CPU, pids, network, disk I/O and GPU.

Sizes are resolved to bytes at load (None = unlimited, "max"); CPU maxima are fractions of
one CPU (2.0 = "200%"). The blocks double as overrides in tool rules: only the keys a rule
writes replace the class's values (`model_fields_set` tells which were written).
"""

from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, model_validator
from pydantic_core import PydanticCustomError

from .fields import (CpuAmount, DiskByteRate, DiskIops, GpuSize, Model, PidsMax, Priority, Rate, Size, Weight,
                     ranged_int)
from ..units import format_size, parse_size


def _order_error(sub, lo_name, lo, hi_name, hi):
    # `sub` extends the error's key path so the message points at the offending key's line.
    return PydanticCustomError(
        "policy_order", "{lo_name} ({lo}) must not exceed {hi_name} ({hi})",
        {"subpath": sub, "lo_name": lo_name, "lo": format_size(lo), "hi_name": hi_name,
         "hi": format_size(hi)})


class MemoryLimits(Model):
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


class CpuLimits(Model):
    weight: Weight = 100
    max: CpuAmount = None          # CPUs; None = no quota


class PidsLimits(Model):
    max: PidsMax = None


class NetworkLimits(Model):
    """Egress of an agent (all its processes together) or of one tool call, on the devices
    `network.devices` names. None = no limit."""
    egress: Rate = None                # bytes/s, from '20Mbit', '2MB/s' or 'max'
    burst: Size = 256 * 1024           # sent at once after a pause, above the rate


class IoLimits(Model):
    """Disk I/O of an agent (all its processes together) or of one tool call.

    `weight` is its share of each disk against its siblings' (io.weight, and io.bfq.weight
    on bfq disks: agents against agents, a call against its agent's other calls); None
    leaves the kernel's 100. The maxima are io.max per second on the disks `io.devices`
    names: one value for every such disk, or a mapping {disk: value} naming some of them
    (the disk as io.devices names it); None = no limit. An agent's maxima bound its calls
    too (the kernel's io.max holds down the tree)."""
    weight: Optional[ranged_int(1, 10000, "io weight")] = None
    rbps: DiskByteRate = None          # read bytes/s, from '20MiB/s', '50M/s' or 'max'
    wbps: DiskByteRate = None          # written bytes/s
    riops: DiskIops = None             # read operations/s
    wiops: DiskIops = None             # write operations/s

    def maxima(self):
        """(rbps, wbps, riops, wiops) as written (a number, None, or {disk: value}), or None
        when none is set."""
        m = (self.rbps, self.wbps, self.riops, self.wiops)
        return None if all(v is None for v in m) else m

    def maxima_for(self, names):
        """(rbps, wbps, riops, wiops) on the disk io.devices names as any of `names` (one
        disk may be named twice, e.g. by a path and by MAJOR:MINOR): a per-disk value of one
        of its names (the lowest, where two names of it have one), else None."""
        out = []
        for v in (self.rbps, self.wbps, self.riops, self.wiops):
            if isinstance(v, dict):
                given = [v[n] for n in names if n in v]
                limited = [x for x in given if x is not None]
                v = min(limited) if limited else None
            out.append(v)
        return tuple(out)


class AgentGpu(Model):
    memory_budget: GpuSize = "max"   # bytes, "50%" of a GPU's memory, or "max"
    priority: Priority = 50
    over_budget: Literal["notify", "kill"] = "notify"   # applied to the agent's lowest-priority GPU call

    def budget_bytes(self, gpu_total_bytes):
        """The budget in bytes for a GPU of `gpu_total_bytes`; None = unlimited."""
        return parse_size(self.memory_budget, gpu_total_bytes)


def _prior(v):
    # A prior is a figure for one call's GPU memory: a size or a share of a GPU, never "max"
    # (that would reserve a whole device for every call of the class) and never 0.
    if v is not None and (str(v).strip().lower() == "max" or not parse_size(v, 1 << 40)):
        raise ValueError(f"gpu.prior must be a size like '4Gi' or a share of a GPU like '25%', not {v!r}")
    return v


GpuPrior = Annotated[Optional[GpuSize], AfterValidator(_prior)]


class ToolGpu(Model):
    fallback: Literal["offload", "wait"] = "offload"   # when no GPU has room
    offload_cpu_weight: Optional[Weight] = None        # cpu.weight given to a call offloaded to CPU
    mps_active_thread_percentage: Optional[ranged_int(1, 100, "MPS thread percentage")] = None
    mps_pinned_mem_limit: Optional[GpuSize] = None
    # GPU memory a call is assumed to need while its command has no GPU history. With one,
    # `device: auto` calls are placed (and may be offloaded) from their first run; without,
    # they are left alone until they have held GPU memory once. `device: gpu` calls use it
    # instead of the built-in prior (agentd/gpu/history.py PRIOR_BYTES).
    prior: GpuPrior = None


class RuleGpu(Model):
    prior: GpuPrior                    # the rule's calls' prior, replacing their class's
