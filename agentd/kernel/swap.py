"""Swap on this host: how much there is (/proc/meminfo SwapTotal) and the cgroup files that
bound a cgroup's use of it.

memory.swap.max (cgroup v2, since 4.5) bounds the swap a cgroup's pages may take;
memory.zswap.max (since 5.19) bounds its compressed pages in zswap. A kernel built without
swap (CONFIG_SWAP=n) or without memory-controller swap accounting offers neither file;
the caller skips what is not offered.
"""

from . import cgroupfs as cgf
from .procfs import meminfo

MEMORY_SWAP_MAX = cgf.MEMORY_SWAP_MAX
MEMORY_ZSWAP_MAX = "memory.zswap.max"
MEMORY_SWAP_CURRENT = "memory.swap.current"


def swap_total(proc="/proc"):
    """Bytes of swap the host has (0 with none, or none enabled); KernelError if unreadable."""
    return meminfo(["SwapTotal"], proc).get("SwapTotal", 0)


def swap_free(proc="/proc"):
    """Bytes of swap still free (/proc/meminfo SwapFree; 0 with none); KernelError if unreadable."""
    return meminfo(["SwapFree"], proc).get("SwapFree", 0)
