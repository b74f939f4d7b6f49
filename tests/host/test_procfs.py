"""The /proc readers against the running kernel, each checked against a second witness:
a syscall that reports the same fact, or a change this test makes and then sees."""

import os
import shutil
import subprocess
import time

from agentd.kernel import cgroupfs, probe
from agentd.kernel.procfs import CAP_SYS_ADMIN, PAGE_SIZE, ProcFS, host_meminfo, own_cgroup


def test_host_meminfo_agrees_with_sysinfo():
    total, available = host_meminfo()
    # sysconf's physical pages come from sysinfo(2): the same totalram_pages as MemTotal
    assert total == os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    assert 0 < available <= total


def test_rss_total_sees_memory_this_process_touches():
    fs = ProcFS()
    before = fs.rss_total([os.getpid()])
    block = bytearray(64 << 20)             # zero-filled: every page written, so resident
    try:
        after = fs.rss_total([os.getpid()])
    finally:
        del block
    assert after - before >= 60 << 20, (before, after)
    p = subprocess.Popen(["true"])
    p.wait()
    assert fs.rss_total([p.pid]) == 0       # reaped: gone, counted as nothing


def test_comms_finds_a_process_by_its_executable_name(tmp_path):
    name = f"agentd-t{os.getpid()}"[:15]
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep"), exe)
    p = subprocess.Popen([str(exe), "30"])
    try:
        # The kernel renames the process (comm) just after exec closes the pipe Popen waits
        # on: a read right after Popen returns may still see the parent's name.
        deadline = time.monotonic() + 5
        while ProcFS().comm(p.pid) != name and time.monotonic() < deadline:
            time.sleep(0.01)
        assert name in ProcFS().comms()
    finally:
        p.kill()
        p.wait()


def test_own_cgroup_is_where_the_kernel_put_a_child(tmp_path):
    mount = cgroupfs.find_cgroup2_mount()
    assert mount is not None
    here = own_cgroup()
    assert os.path.isdir(os.path.join(mount, here.lstrip("/")))
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert own_cgroup(p.pid) == here == ProcFS().cgroup("self")
        pids = open(os.path.join(mount, here.lstrip("/"), cgroupfs.PROCS)).read().split()
        assert str(p.pid) in pids
    finally:
        p.kill()
        p.wait()


def test_capabilities_of_self_and_a_child_without_them():
    held = probe.has_capability(CAP_SYS_ADMIN)
    assert ProcFS().has_capability("self", CAP_SYS_ADMIN) == held
    assert held == (os.geteuid() == 0)      # the host tier runs as root, with its capabilities
    # a child that drops every capability (bounding set emptied before exec) holds none
    p = subprocess.Popen(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while ProcFS().comm(p.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ProcFS().comm(p.pid) == "sleep"
        assert not ProcFS().has_capability(p.pid, CAP_SYS_ADMIN)
    finally:
        p.kill()
        p.wait()
