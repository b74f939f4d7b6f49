"""Egress rates per cgroup (bpf/egress.bpf.c): the loader and its map.

One object per daemon, attached through a BPF link to agentd's root cgroup, so it sees
every socket of every agent and tool call below. The daemon writes a rate for a cgroup
(an agent, a tool call) into `egress_limits`; the program stamps each packet with its
earliest departure and keeps per-cgroup counters, which the daemon reads for metrics.

Why a link and not a cgroup attachment: the map that holds the rates belongs to the
daemon that loaded it. A program left attached after that daemon died would go on
applying rates nobody can change, and the next daemon would add its own beside it; a
link makes the kernel detach the program with its process. Egress limits lapse while no
daemon runs (memory limits, written to cgroupfs, do not).

The departure times are honoured by the fq qdisc only (agentd/kernel/qdisc.py puts it on
the devices the policy names).

Lifecycle: open -> rodata config (the attach point's level) -> load -> attach -> set /
clear / counters per cgroup -> close.
"""

import ctypes as C
import os

from ..errors import BpfError
from . import bpf_types as T
from . import libbpf
from .bpf_objects import object_path
from .cgroupfs import open_dir

PROGRAM = "agentd_egress"
MAP = "egress_limits"
NSEC_PER_SEC = 1_000_000_000
HORIZON_S = 2.0               # a packet due later than this is dropped (fq's own horizon: 10 s)


def cgroup_level(rel_path):
    """The kernel's level of a cgroup given by its path below the v2 mount (root: 0)."""
    return len([p for p in str(rel_path).split("/") if p])


def _config(root_level, horizon_s):
    if root_level < 0:
        raise BpfError(f"egress: cgroup level {root_level} is not a level")
    if not 0 < horizon_s <= 10.0:
        raise BpfError(f"egress: horizon {horizon_s} s is outside (0, 10] s (fq drops past 10 s)")
    return T.agentd_egress_config(horizon_ns=int(horizon_s * NSEC_PER_SEC), first_level=root_level + 1)


def burst_ns(rate_bytes_per_s, burst_bytes):
    """The lag of a cgroup's clock behind now that lets `burst_bytes` leave at once."""
    if rate_bytes_per_s <= 0:
        return 0
    return int(burst_bytes * NSEC_PER_SEC // rate_bytes_per_s)


class Egress:
    """Loaded egress program, attached to the cgroup directory `root_dir` whose path below
    the v2 mount is `root_rel` (its level decides which ancestors the program reads)."""

    def __init__(self, root_dir, root_rel, path=None, horizon_s=HORIZON_S):
        self.path = path or object_path("egress")
        obj = libbpf.Object(self.path)
        try:
            obj.set_rodata(_config(cgroup_level(root_rel), horizon_s))
            obj.load()
            fd = open_dir(root_dir)
            try:
                obj.attach_cgroup_link(PROGRAM, fd)
            finally:
                os.close(fd)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self._map = obj.map(MAP)
        self.prog_id = obj.prog_id(PROGRAM)

    def set(self, cgroup_id, rate_bytes_per_s=0, burst_bytes=0, classid=0):
        """Limit the cgroup `cgroup_id` (and what it holds): fq mode, `rate_bytes_per_s`
        with `burst_bytes` allowed at once after idling; htb mode, rate 0 and the htb
        `classid` that holds the rate. Rate 0 and no class: count only. Counters and the
        clock of an entry that exists are kept."""
        key = C.c_uint64(int(cgroup_id))
        val = T.agentd_egress()
        self._map.lookup(key, val)
        val.rate_bps = max(int(rate_bytes_per_s), 0)
        val.burst_ns = burst_ns(val.rate_bps, max(int(burst_bytes), 0))
        val.classid = int(classid)
        self._map.update(key, val)

    def clear(self, cgroup_id):
        """Stop limiting and counting `cgroup_id`; False if it had no entry."""
        return self._map.delete(C.c_uint64(int(cgroup_id)))

    def counters(self, cgroup_id):
        """{'bytes', 'packets', 'delayed', 'drops', 'rate_bps'} of `cgroup_id`, or None."""
        val = T.agentd_egress()
        if not self._map.lookup(C.c_uint64(int(cgroup_id)), val):
            return None
        return {"bytes": val.bytes, "packets": val.packets, "delayed": val.delayed, "drops": val.drops,
                "rate_bps": val.rate_bps}

    def cgroups(self):
        """The cgroup ids that have an entry."""
        return [k.value for k in self._map.keys(C.c_uint64)]

    def attached(self, cgroup_dir):
        """Is this program attached to the cgroup at `cgroup_dir` itself?"""
        fd = open_dir(cgroup_dir)
        try:
            return self.prog_id in libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_INET_EGRESS)
        finally:
            os.close(fd)

    def close(self):
        self._obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

