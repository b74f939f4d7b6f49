"""Probe kernel features once at start into a frozen Capabilities object.

Every later layer asks this object instead of touching the kernel again, and each
missing feature yields exactly one warning with what it costs and how to get it.
"""

import dataclasses
import os

from ..errors import KernelError
from . import cgroupfs
from .procfs import CAP_BPF, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, ProcFS
from .sched_ext import SchedExtSysfs

BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
# Memory struct_ops for cgroups exists only in an out-of-tree patch set; its BTF type
# name is what would tell us the kernel has it.
MEMCG_STRUCT_OPS_TYPE = b"memcg_bpf_ops"


def btf_has(name, path=BTF_VMLINUX):
    """Does the kernel's BTF mention `name` (bytes)? False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return name in f.read()
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Capabilities:
    root_user: bool
    cgroup2_mount: str | None
    controllers: tuple = ()          # offered at the v2 root
    psi: bool = False
    memory_peak: bool = False
    cgroup_kill: bool = False
    cgroup_freeze: bool = False
    btf: bool = False
    bpf_permitted: bool = False
    sched_ext: bool = False
    sched_ext_state: str | None = None
    memcg_struct_ops: bool = False
    favordynmods: bool = False
    sys_resource: bool = False       # CAP_SYS_RESOURCE: may lower oom_score_adj (agentd/oom.py)

    def warnings(self):
        """One line per missing feature: what agentd does without it and how to get it."""
        w = []
        if not self.root_user:
            w.append("not running as root: agentd needs root (or CAP_SYS_ADMIN) to manage cgroups; run it with sudo")
        if not self.cgroup2_mount:
            w.append("no cgroup v2 hierarchy mounted: boot with systemd.unified_cgroup_hierarchy=1 or "
                     "`mount -t cgroup2 none /sys/fs/cgroup/unified`")
            return w
        missing = [c for c in ("memory", "cpu", "pids", "io") if c not in self.controllers]
        if missing:
            w.append(f"cgroup v2 controllers missing at {self.cgroup2_mount}: {', '.join(missing)} "
                     "(bound to cgroup v1 or disabled); memory/CPU limits are not enforced, agentd still "
                     "places, freezes, kills and accounts tool calls. Boot with systemd.unified_cgroup_hierarchy=1 "
                     "to get them")
        if not self.psi:
            w.append("PSI unavailable: pressure reactions fall back to polling memory usage; boot with psi=1")
        if not self.memory_peak and "memory" in self.controllers:
            w.append("memory.peak missing (Linux < 5.19): tool-call peaks come from sampling")
        if not self.cgroup_kill:
            w.append("cgroup.kill missing (Linux < 5.14): tool calls are killed process by process")
        if not self.cgroup_freeze:
            w.append("cgroup.freeze missing (Linux < 5.2): the freeze step of the pressure ladder is skipped")
        if not self.btf:
            w.append(f"no BTF at {BTF_VMLINUX}: eBPF programs cannot load; user-space monitoring is used")
        elif not self.bpf_permitted:
            w.append("bpf(2) not permitted (needs CAP_BPF or root): user-space monitoring is used")
        if self.root_user and not self.sys_resource:
            w.append("no CAP_SYS_RESOURCE: agents cannot be protected from the kernel's OOM killer "
                     "(oom_score_adj below 0), and a tool call's value is not pinned (a call may lower "
                     "its own back to its agent's); tool calls still go first by their raised values. "
                     "Run agentd with CAP_SYS_RESOURCE (the systemd unit keeps it)")
        if self.cgroup2_mount and not self.favordynmods:
            w.append(f"cgroup v2 at {self.cgroup2_mount} is mounted without favordynmods: every move of a process "
                     "between cgroups waits for an RCU grace period (~10 ms on a busy host). `agentd tool` avoids "
                     "moves (clone3 into the cgroup); automatic detection cannot. To make moves cheap: "
                     f"mount -o remount,favordynmods {self.cgroup2_mount}")
        return w

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["controllers"] = list(self.controllers)
        return d


def _mount_has_option(mount, option):
    return option in cgroupfs.cgroup2_mounts().get(mount, ())


def has_capability(*bits):
    """Does this process hold any of the capabilities `bits` in its effective set?"""
    try:
        return ProcFS().has_capability("self", *bits)
    except KernelError:
        return False


def _bpf_permitted():
    return has_capability(CAP_BPF, CAP_SYS_ADMIN)


def probe(mount=None, test_cgroup=None):
    """Probe the host. `test_cgroup` (relative to the mount) is a cgroup agentd owns,
    used to see which interface files a non-root cgroup has (the root lacks most)."""
    mount = mount or cgroupfs.find_cgroup2_mount()
    controllers = ()
    psi = peak = kill = freeze = False
    if mount:
        fs = cgroupfs.CgroupFS(mount)
        try:
            controllers = tuple(fs.controllers(""))
        except Exception:
            controllers = ()
        psi = os.path.exists("/proc/pressure/memory")
        probe_cg = test_cgroup
        made = False
        if probe_cg is None:
            probe_cg = f"agentd.probe-{os.getpid()}"
            try:
                made = fs.mkdir(probe_cg)
            except Exception:
                probe_cg = None
        if probe_cg:
            try:
                kill = fs.has(probe_cg, cgroupfs.KILL)
                freeze = fs.has(probe_cg, cgroupfs.FREEZE)
                # memory.peak appears only where the memory controller is enabled for
                # the cgroup; judge by the kernel's own root-level file otherwise.
                peak = fs.has(probe_cg, cgroupfs.MEMORY_PEAK)
                psi = psi and fs.has(probe_cg, cgroupfs.MEMORY_PRESSURE)
            finally:
                if made:
                    fs.rmdir(probe_cg)
    sched_state = SchedExtSysfs().state()
    btf = os.path.exists(BTF_VMLINUX)
    memcg_ops = btf and btf_has(MEMCG_STRUCT_OPS_TYPE)
    return Capabilities(
        root_user=os.geteuid() == 0,
        cgroup2_mount=mount,
        controllers=controllers,
        psi=psi,
        memory_peak=peak,
        cgroup_kill=kill,
        cgroup_freeze=freeze,
        btf=btf,
        bpf_permitted=_bpf_permitted(),
        sched_ext=sched_state is not None,
        sched_ext_state=sched_state,
        memcg_struct_ops=memcg_ops,
        favordynmods=bool(mount) and _mount_has_option(mount, "favordynmods"),
        sys_resource=has_capability(CAP_SYS_RESOURCE),
    )
