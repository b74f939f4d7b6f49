"""kernel/procfs.cpu_times: busy and total CPU ticks from /proc/stat (a fixture root and the
real one)."""

import pytest

from agentd.errors import KernelError
from agentd.kernel.procfs import cpu_times


def test_busy_leaves_out_idle_and_iowait(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text("cpu  100 5 50 800 40 3 2 10 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n")
    assert cpu_times(str(tmp_path)) == (100 + 5 + 50 + 3 + 2 + 10, 1010)


def test_a_file_without_the_cpu_line_is_a_kernel_error(tmp_path):
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    with pytest.raises(KernelError, match="no cpu line"):
        cpu_times(str(tmp_path))
    with pytest.raises(KernelError, match="reading"):
        cpu_times(str(tmp_path / "missing"))


def test_the_real_proc_stat_counts_forward():
    busy0, total0 = cpu_times()
    sum(range(200000))
    busy1, total1 = cpu_times()
    assert 0 <= busy0 <= total0 and busy1 >= busy0 and total1 >= total0
