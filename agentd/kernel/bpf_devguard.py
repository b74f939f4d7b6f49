"""The device guard (bpf/devguard.bpf.c): GPUs hidden from a tool call's cgroup.

One object is loaded per daemon, configured with the character-device majors to refuse,
and attached to the cgroup of each tool call that GPU placement sends to the CPU. The
attachment is the cgroup's (bpf(BPF_PROG_ATTACH), not a link): it holds while the daemon
restarts and ends with the cgroup, so a call never regains the GPU because agentd went away.

Lifecycle: open -> rodata config (the majors) -> load -> attach per cgroup -> close.
"""

import errno
import os

from ..errors import BpfError, KernelError
from . import bpf_types as T
from . import libbpf
from .bpf_objects import object_path
from .cgroupfs import open_dir

PROGRAM = "agentd_devguard"
# The NVIDIA driver registers its devices (/dev/nvidia<N>, nvidiactl, nvidia-modeset) under
# this fixed major (NV_MAJOR_DEVICE_NUMBER); nvidia-uvm's major is allocated at module load.
NVIDIA_MAJOR = 195
NVIDIA_UVM = "nvidia-uvm"
MAX_MAJOR = (1 << 12) - 1          # the kernel's MAJOR() is 12 bits


def char_majors(proc_root="/proc"):
    """{driver name: major} of the character devices in <proc_root>/devices."""
    out = {}
    try:
        with open(os.path.join(proc_root, "devices")) as f:
            text = f.read()
    except OSError as err:
        raise KernelError(f"reading {proc_root}/devices: {err.strerror}") from err
    section = None
    for line in text.splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split()
        if section == "Character devices:" and len(parts) == 2 and parts[0].isdigit():
            out.setdefault(parts[1], int(parts[0]))
    return out


def nvidia_majors(proc_root="/proc"):
    """The majors a call sent to the CPU must not open: 195, plus nvidia-uvm's when its
    module is loaded (CUDA needs both; without the module there is nothing to hide)."""
    majors = [NVIDIA_MAJOR]
    uvm = char_majors(proc_root).get(NVIDIA_UVM)
    if uvm is not None and uvm not in majors:
        majors.append(uvm)
    return majors


def _config(majors):
    majors = [int(m) for m in majors]
    if not majors or len(majors) > T.AGENTD_DEVGUARD_MAX_MAJORS:
        raise BpfError(f"device guard: give 1 to {T.AGENTD_DEVGUARD_MAX_MAJORS} device majors, not {len(majors)}")
    bad = [m for m in majors if not 0 < m <= MAX_MAJOR]
    if bad:
        raise BpfError(f"device guard: {bad[0]} is not a device major (1..{MAX_MAJOR})")
    cfg = T.agentd_devguard_config(nr_majors=len(majors))
    for i, m in enumerate(majors):
        cfg.majors[i] = m
    return cfg


class DevGuard:
    """Loaded device program refusing `majors` (character devices) in the cgroups it is
    attached to. close() unloads it from this process; attachments stay with their cgroups."""

    def __init__(self, majors, path=None):
        self.majors = tuple(int(m) for m in majors)
        self.path = path or object_path("devguard")
        obj = libbpf.Object(self.path)
        try:
            obj.set_rodata(_config(self.majors))
            obj.load()
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self.prog_id = obj.prog_id(PROGRAM)

    def hide(self, cgroup_dir):
        """Refuse the devices to every process of the cgroup at `cgroup_dir` (a path under a
        cgroup v2 mount) and its descendants. Attaching twice is a no-op."""
        fd = open_dir(cgroup_dir)
        try:
            # The kernel refuses the same program twice on one cgroup (EINVAL with
            # BPF_F_ALLOW_MULTI): ask first, so a repeated decision is no error.
            if self.prog_id not in libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_DEVICE):
                self._obj.attach_cgroup(PROGRAM, fd, libbpf.BPF_CGROUP_DEVICE)
        finally:
            os.close(fd)

    def unhide(self, cgroup_dir):
        """Detach from the cgroup at `cgroup_dir`; False if it was not attached there."""
        fd = open_dir(cgroup_dir)
        try:
            self._obj.detach_cgroup(PROGRAM, fd, libbpf.BPF_CGROUP_DEVICE)
            return True
        except BpfError as err:
            if getattr(err, "errno", None) == errno.ENOENT:
                return False
            raise
        finally:
            os.close(fd)

    def hidden(self, cgroup_dir):
        """Is this program attached to the cgroup at `cgroup_dir` itself?"""
        fd = open_dir(cgroup_dir)
        try:
            return self.prog_id in libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_DEVICE)
        finally:
            os.close(fd)

    def close(self):
        self._obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
