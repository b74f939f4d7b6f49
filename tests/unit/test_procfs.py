"""The /proc and mount-table readers over fake trees on disk: the formats the kernel writes,
and what each reader makes of a process that is gone or a file that is missing."""

import pytest

from agentd.errors import FeatureMissing, ProcessGone
from agentd.kernel import cgroupfs
from agentd.kernel.procfs import (CAP_BPF, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, PAGE_SIZE, ProcFS,
                                  host_meminfo, own_cgroup)
from agentd.policy.match import ToolLimits

GiB = 1 << 30


def _proc(tmp_path, pid, **files):
    d = tmp_path / str(pid)
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_host_meminfo_reads_total_and_available(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       32768000 kB\nMemFree:         1000 kB\n"
                                      "MemAvailable:   16384000 kB\nBuffers:  12 kB\n")
    assert host_meminfo(str(tmp_path)) == (32768000 * 1024, 16384000 * 1024)


def test_host_meminfo_unknown_is_none(tmp_path):
    assert host_meminfo(str(tmp_path)) == (None, None)                    # no meminfo at all
    (tmp_path / "meminfo").write_text("MemTotal:       1024 kB\n")      # a kernel before 3.14
    assert host_meminfo(str(tmp_path)) == (1024 * 1024, None)


def test_cgroup_is_the_v2_line(tmp_path):
    _proc(tmp_path, 7, cgroup="12:memory:/v1/path\n0::/agentd/agents/a1/tools/t2\n")
    _proc(tmp_path, "self", cgroup="0::/\n")
    assert ProcFS(str(tmp_path)).cgroup(7) == "/agentd/agents/a1/tools/t2"
    assert own_cgroup(7, str(tmp_path)) == "/agentd/agents/a1/tools/t2"
    assert own_cgroup(proc=str(tmp_path)) == "/"


def test_cgroup_without_v2_membership_or_process(tmp_path):
    _proc(tmp_path, 8, cgroup="4:pids:/x\n")
    with pytest.raises(FeatureMissing, match="no cgroup v2 membership"):
        own_cgroup(8, str(tmp_path))
    with pytest.raises(ProcessGone):
        own_cgroup(9, str(tmp_path))


def test_has_capability_reads_cap_eff_for_any_of_the_bits(tmp_path):
    eff = (1 << CAP_SYS_ADMIN) | (1 << CAP_BPF)
    _proc(tmp_path, 5, status=f"Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t{1 << CAP_SYS_RESOURCE:016x}\n"
                              f"CapEff:\t{eff:016x}\n")
    fs = ProcFS(str(tmp_path))
    assert fs.has_capability(5, CAP_BPF)
    assert not fs.has_capability(5, CAP_SYS_RESOURCE)        # permitted, not effective
    assert fs.has_capability(5, CAP_SYS_RESOURCE, CAP_SYS_ADMIN)


def test_rss_total_skips_processes_gone_meanwhile(tmp_path):
    _proc(tmp_path, 10, statm="1000 200 50 1 0 100 0\n")
    _proc(tmp_path, 11, statm="500 30 5 1 0 10 0\n")
    assert ProcFS(str(tmp_path)).rss_total([10, 11, 12]) == 230 * PAGE_SIZE


def test_comms_lists_every_process(tmp_path):
    _proc(tmp_path, 1, comm="systemd\n")
    _proc(tmp_path, 42, comm="nvidia-cuda-mps\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "meminfo").write_text("")
    assert sorted(ProcFS(str(tmp_path)).comms()) == ["nvidia-cuda-mps", "systemd"]


def test_cgroup2_mounts_and_options(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw,nosuid 0 0\n"
                      "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nsdelegate 0 0\n"
                      "none /mnt/my\\040tree cgroup2 rw,favordynmods 0 0\n")
    assert cgroupfs.cgroup2_mounts(str(mounts)) == {
        "/sys/fs/cgroup/unified": ("rw", "nosuid", "nsdelegate"), "/mnt/my tree": ("rw", "favordynmods")}
    # neither has a readable cgroup.controllers here: the first one found
    assert cgroupfs.find_cgroup2_mount(str(mounts)) == "/sys/fs/cgroup/unified"
    assert cgroupfs.cgroup2_mounts(str(tmp_path / "missing")) == {}
    assert cgroupfs.find_cgroup2_mount(str(tmp_path / "missing")) is None


def test_limit_values_are_the_cgroup_file_contents():
    lim = ToolLimits(memory_low=GiB, memory_high=2 * GiB, memory_max=None, cpu_weight=50, cpu_max=0.5, pids_max=64)
    assert cgroupfs.limit_values(lim) == {
        cgroupfs.MEMORY_MIN: "0", cgroupfs.MEMORY_LOW: str(GiB), cgroupfs.MEMORY_HIGH: str(2 * GiB),
        cgroupfs.MEMORY_MAX: "max", cgroupfs.CPU_WEIGHT: "50", cgroupfs.CPU_MAX: "50000 100000",
        cgroupfs.PIDS_MAX: "64"}
    # the kernel refuses a cpu.max quota under 1 ms
    assert cgroupfs.limit_values(ToolLimits(cpu_max=0.001))[cgroupfs.CPU_MAX] == "1000 100000"
