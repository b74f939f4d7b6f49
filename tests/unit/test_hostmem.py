"""The memory agentd manages: the tightest memory.max above its root, else the host's RAM."""

from agentd.monitor.hostmem import HostMemory, tightest_limit
from agentd.kernel.fakes import FakeCgroupFS

MiB = 1 << 20
GiB = 1 << 30


def host(total=8 * GiB, avail=6 * GiB):
    return lambda: (total, avail)


def tree(tmp_path):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    fs.makedirs("slice/bench/agentd")
    return fs


def test_no_limit_above_the_root_is_the_host(tmp_path):
    fs = tree(tmp_path)
    m = HostMemory(fs, "slice/bench/agentd", host())
    assert (m.total, m.limit, m.available()) == (8 * GiB, None, 6 * GiB)
    assert "RAM" in m.describe()


def test_the_tightest_ancestor_limit_wins_and_its_usage_sets_what_is_available(tmp_path):
    fs = tree(tmp_path)
    fs.write("slice", "memory.max", str(2 * GiB))
    fs.write("slice/bench", "memory.max", str(600 * MiB))
    fs.write("slice/bench", "memory.current", str(450 * MiB))
    assert tightest_limit(fs, "slice/bench/agentd") == ("slice/bench", 600 * MiB)
    m = HostMemory(fs, "slice/bench/agentd", host())
    assert m.total == 600 * MiB
    assert m.available() == 150 * MiB
    assert "slice/bench" in m.describe()
    # the host itself short of memory bounds it too
    assert HostMemory(fs, "slice/bench/agentd", host(avail=100 * MiB)).available() == 100 * MiB


def test_the_root_own_limit_counts(tmp_path):
    # systemd's MemoryMax= lands on the service cgroup, which is agentd's root
    fs = tree(tmp_path)
    fs.write("slice/bench/agentd", "memory.max", str(1 * GiB))
    assert HostMemory(fs, "slice/bench/agentd", host()).total == 1 * GiB


def test_a_cap_above_the_ram_caps_nothing(tmp_path):
    fs = tree(tmp_path)
    fs.write("slice", "memory.max", str(64 * GiB))
    m = HostMemory(fs, "slice/bench/agentd", host())
    assert (m.total, m.limit) == (8 * GiB, None)


def test_usage_over_the_cap_leaves_nothing(tmp_path):
    fs = tree(tmp_path)
    fs.write("slice", "memory.max", str(100 * MiB))
    fs.write("slice", "memory.current", str(120 * MiB))
    assert HostMemory(fs, "slice/bench/agentd", host()).available() == 0


def test_a_resize_is_seen_on_refresh(tmp_path):
    fs = tree(tmp_path)
    m = HostMemory(fs, "slice/bench/agentd", host())
    assert m.refresh() is False
    fs.write("slice/bench", "memory.max", str(600 * MiB))
    assert m.refresh() is True and m.total == 600 * MiB
    fs.write("slice/bench", "memory.max", "max")
    assert m.refresh() is True and m.total == 8 * GiB


def test_inactive_page_cache_under_the_cap_counts_as_available(tmp_path):
    # Usage near the cap after file I/O is mostly cache the kernel reclaims before an OOM.
    fs = tree(tmp_path)
    fs.write("slice/bench", "memory.max", str(1 * GiB))
    fs.write("slice/bench", "memory.current", str(1000 * MiB))
    fs.write("slice/bench", "memory.stat", f"anon {300 * MiB}\nfile {700 * MiB}\nactive_file {100 * MiB}\n"
                                           f"inactive_file {600 * MiB}\n")
    assert HostMemory(fs, "slice/bench/agentd", host()).available() == 1024 * MiB - 1000 * MiB + 600 * MiB


def test_an_oom_group_above_the_root_is_found(tmp_path):
    from agentd.monitor.hostmem import oom_group_above
    fs = tree(tmp_path)
    assert oom_group_above(fs, "slice/bench/agentd") is None        # no such file: no memory controller
    for cg in ("slice", "slice/bench", "slice/bench/agentd"):
        fs.write(cg, "memory.oom.group", "0")
    assert oom_group_above(fs, "slice/bench/agentd") is None
    fs.write("slice/bench", "memory.oom.group", "1")
    fs.write("slice/bench/agentd", "memory.oom.group", "1")
    assert oom_group_above(fs, "slice/bench/agentd") == "slice/bench"   # the highest one is what the kernel kills
