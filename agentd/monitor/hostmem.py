"""The memory agentd may hand out: the host's RAM, or less where a cgroup above agentd caps it.

agentd often runs inside a limit it did not set: a systemd slice with MemoryMax=, a
container's or a pod's memory.max, a benchmark's budget. Then the host's MemTotal and
MemAvailable overstate what agents can use, and every figure derived from them — policy
percentages, the admission budget, how far memory.high may rise — is wrong. The tightest
memory.max on the path from agentd's root up to the hierarchy's top is the real size of
the machine agentd manages; what that cgroup does not yet use is what is available.

One instance per daemon; `total` is what the policy's percentages resolve against (the
daemon re-reads it every sweep; when it changes, the policy is reloaded and running
agents' memory limits written again), `available()` is read on every decision.
"""

import logging

from ..errors import AgentdError
from ..kernel import cgroupfs as cgf
from ..kernel.procfs import host_meminfo

log = logging.getLogger("agentd")


def tightest_limit(fs, root):
    """(cgroup, memory.max in bytes) of the tightest limit on `root` and its ancestors, or
    (None, None) when none of them has one (or the memory controller is off there)."""
    parts = [p for p in root.strip("/").split("/") if p]
    best = (None, None)
    for i in range(len(parts), 0, -1):
        cg = "/".join(parts[:i])
        try:
            if not fs.has(cg, cgf.MEMORY_MAX):
                continue
            v = fs.read_int(cg, cgf.MEMORY_MAX)
        except (AgentdError, ValueError):
            continue
        if v is not None and (best[1] is None or v < best[1]):
            best = (cg, v)
    return best


def oom_group_above(fs, root):
    """The highest of `root` and its ancestors with memory.oom.group=1, or None.

    The kernel's OOM killer, having picked a victim, kills the whole of the highest
    cgroup with memory.oom.group set between the victim and the cgroup that ran out. A
    container runtime (Kubernetes on cgroup v2) or systemd's OOMPolicy=kill sets it on the
    cgroup agentd runs in; an OOM at that level then takes every agent and the daemon,
    whatever order agentd gave the killer (agentd/oom.py)."""
    parts = [p for p in root.strip("/").split("/") if p]
    for i in range(1, len(parts) + 1):
        cg = "/".join(parts[:i])
        try:
            if fs.has(cg, cgf.MEMORY_OOM_GROUP) and fs.read_int(cg, cgf.MEMORY_OOM_GROUP) == 1:
                return cg
        except (AgentdError, ValueError):
            continue
    return None


def reclaimable(fs, cg):
    """Bytes of `cg`'s memory.current the kernel reclaims before it OOM-kills there: its
    inactive page cache (memory.stat inactive_file). memory.current counts the page cache,
    and a cgroup under memory.max only reclaims at the limit, so after some file I/O its
    usage sits near the limit while most of it is cache; MemAvailable counts the host's
    cache as available for the same reason. 0 when unknown."""
    try:
        return max(0, cgf.flat_key(fs.read(cg, cgf.MEMORY_STAT), "inactive_file") or 0)
    except AgentdError:           # no memory.stat here (controller off), or gone
        return 0


def room_below(fs, cg, limit):
    """Bytes `cg` can still take before it reaches `limit` (its own or an ancestor's
    memory.max): the limit less what it holds, reclaimable page cache counted as room.
    AgentdError when its usage cannot be read."""
    used = fs.read_int(cg, cgf.MEMORY_CURRENT) or 0
    return max(0, limit - used + reclaimable(fs, cg))


class HostMemory:
    def __init__(self, fs, root, host_fn=host_meminfo):
        self.fs = fs
        self.root = root
        self.host_fn = host_fn
        self.host_total, _ = host_fn()
        self.cgroup, self.limit = None, None
        self.refresh()

    def refresh(self):
        """Read the limits again (an operator may resize a slice at run time:
        `systemctl set-property ... MemoryMax=`); True when the total changed."""
        before = self.total
        self.cgroup, self.limit = tightest_limit(self.fs, self.root)
        if self.limit is not None and self.host_total is not None and self.limit >= self.host_total:
            self.cgroup, self.limit = None, None      # a cap above the RAM caps nothing
        return self.total != before

    @property
    def total(self):
        """Bytes agentd manages: the tightest cap above it, else the host's RAM (None if unknown)."""
        return self.limit if self.limit is not None else self.host_total

    def describe(self):
        if self.limit is not None:
            return f"{self.limit} bytes (memory.max of {self.cgroup})"
        return f"{self.host_total} bytes (the host's RAM)" if self.host_total else "unknown"

    def available(self):
        """Bytes that can still be allocated under the cap and on the host, or None."""
        _, host_avail = self.host_fn()
        if self.limit is None:
            return host_avail
        try:
            room = room_below(self.fs, self.cgroup, self.limit)
        except AgentdError:
            return host_avail
        return room if host_avail is None else min(room, host_avail)
