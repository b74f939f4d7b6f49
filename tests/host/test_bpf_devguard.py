"""The device program (bpf/devguard.bpf.c) on the host kernel: attached to a cgroup v2
cgroup, it refuses the configured character devices to the cgroup's processes (and its
descendants') while the same open works outside it.

The device nodes are made with mknod in the test's folder: a c 195 0 node (the NVIDIA
driver's major) opens with ENXIO outside (the device check passed, no driver here) and
EPERM inside; a node of /dev/null's numbers (c 1 3) shows a full open and read outside.
"""

import errno
import os
import stat
import subprocess
import sys

import pytest

from agentd.kernel import libbpf
from agentd.kernel.bpf_devguard import NVIDIA_MAJOR, DevGuard, nvidia_majors

# Moves itself into the cgroup whose cgroup.procs is argv[1], then opens each further
# argument read-write and prints "ok" or the errno.
PROBE = r"""
import os, sys
with open(sys.argv[1], "w") as f:
    f.write("0")
for p in sys.argv[2:]:
    try:
        os.close(os.open(p, os.O_RDWR))
        print("ok")
    except OSError as e:
        print(e.errno)
"""


def node(folder, name, major, minor):
    path = os.path.join(folder, name)
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def open_in(cgfs, cg, *paths):
    """What a process in cgroup `cg` gets opening `paths`: "ok" or an errno, each."""
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, cgfs.path(cg, "cgroup.procs"), *paths],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [v if v == "ok" else int(v) for v in out.stdout.split()]


def open_here(path):
    try:
        with open(path, "r+b") as f:
            f.read(1)
        return "ok"
    except OSError as e:
        return e.errno


@pytest.fixture
def call_cgroup(cgfs, test_root):
    cgfs.mkdir(test_root)
    cgfs.mkdir(f"{test_root}/call")
    return f"{test_root}/call"


def test_nvidia_device_refused_in_the_call_and_open_outside(cgfs, call_cgroup, tmp_path):
    gpu = node(str(tmp_path), "nvidia0", NVIDIA_MAJOR, 0)
    ctl = node(str(tmp_path), "nvidiactl", NVIDIA_MAJOR, 255)
    assert open_in(cgfs, call_cgroup, gpu, ctl) == [errno.ENXIO, errno.ENXIO]     # nothing attached yet
    with DevGuard(nvidia_majors()) as g:
        g.hide(cgfs.path(call_cgroup))
        assert g.hidden(cgfs.path(call_cgroup))
        assert open_in(cgfs, call_cgroup, gpu, ctl) == [errno.EPERM, errno.EPERM]
        assert open_here(gpu) == errno.ENXIO          # outside: past the device check, no driver
        # A cgroup below the call's (a nested sandbox) is refused too.
        cgfs.mkdir(f"{call_cgroup}/inner")
        assert open_in(cgfs, f"{call_cgroup}/inner", gpu) == [errno.EPERM]


def test_a_device_that_works_outside_is_refused_inside(cgfs, call_cgroup, tmp_path):
    null = node(str(tmp_path), "null", 1, 3)
    assert open_here(null) == "ok"
    with DevGuard([1]) as g:
        g.hide(cgfs.path(call_cgroup))
        assert open_in(cgfs, call_cgroup, null) == [errno.EPERM]
        assert open_here(null) == "ok"
        assert g.unhide(cgfs.path(call_cgroup)) and not g.unhide(cgfs.path(call_cgroup))
        assert open_in(cgfs, call_cgroup, null) == ["ok"]


def test_the_attachment_is_the_cgroups_once_and_outlives_the_loader(cgfs, call_cgroup, tmp_path):
    gpu = node(str(tmp_path), "nvidia0", NVIDIA_MAJOR, 0)
    cg = cgfs.path(call_cgroup)
    g = DevGuard([NVIDIA_MAJOR])
    g.hide(cg)
    g.hide(cg)                                        # a repeated decision attaches nothing more
    fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_DEVICE) == [g.prog_id]
        g.close()                                     # the daemon stops or restarts
        assert libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_DEVICE) == [g.prog_id]
    finally:
        os.close(fd)
    assert open_in(cgfs, call_cgroup, gpu) == [errno.EPERM]


def test_bad_majors_are_refused_before_load():
    from agentd.errors import BpfError
    with pytest.raises(BpfError, match="not a device major"):
        DevGuard([0])
    with pytest.raises(BpfError, match="1 to 8 device majors"):
        DevGuard(list(range(1, 10)))
