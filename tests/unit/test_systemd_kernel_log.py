"""The systemd tier's judgement of the guest kernel's log (tests/systemd/kernel_log.py),
on lines taken from real guest runs of the 7.3 kernel under QEMU 7.2."""

import re

from tests.systemd import kernel_log

# A clean run: userspace's WARNING through /dev/kmsg and an OOM kill's call trace are not kernel faults.
CLEAN = """\
kern  :info  : [    3.136118] 9pnet: Limiting 'msize' to 512000 as this is the maximum supported by transport virtio
user  :warn  : [   30.585293] virtme-ng-init: WARNING: failed to run: "lvmconfig" --type default --file /etc/lvm/lvm.conf
kern  :warn  : [  134.240000] alloc invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
kern  :warn  : [  134.240185] Call Trace:
kern  :warn  : [  134.241085]  dump_stack_lvl+0x5d/0x80
kern  :err   : [  134.245000] Memory cgroup out of memory: Killed process 2136 (alloc) total-vm:27636kB
kern  :info  : [  616.306390] sched_ext: BPF scheduler "agentd" enabled (partial)
"""

# An int3 trap at a jump label being patched (sched_ext enabling its static keys).
INT3 = """\
kern  :warn  : [  623.210128] ops->cpu_acquire/release() are deprecated, use sched_switch TP instead
kern  :warn  : [  623.254486] Oops: int3: 0000 [#1] SMP NOPTI
kern  :warn  : [  623.255472] CPU: 1 UID: 0 PID: 0 Comm: swapper/1 Not tainted 7.3.4+deb13-amd64 #1 PREEMPT(lazy)
kern  :warn  : [  623.256467] RIP: 0010:put_prev_task_idle+0x13/0x40
kern  :emerg : [  623.261510] Kernel panic - not syncing: Fatal exception in interrupt
"""

WARN = """\
kern  :warn  : [   80.100000] ------------[ cut here ]------------
kern  :warn  : [   80.100001] WARNING: CPU: 0 PID: 412 at kernel/cgroup/cgroup.c:2270 cgroup_migrate+0x1a/0x40
kern  :alert : [   81.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008
"""


def test_a_clean_log_has_no_fault():
    assert kernel_log.faults(CLEAN) == []


def test_every_kernel_fault_is_found_in_order():
    assert kernel_log.faults(CLEAN + WARN) == [
        "WARNING: CPU: 0 PID: 412 at kernel/cgroup/cgroup.c:2270 cgroup_migrate+0x1a/0x40",
        "BUG: kernel NULL pointer dereference, address: 0000000000000008"]
    assert not kernel_log.emulator_fault(kernel_log.faults(WARN))


def test_the_emulators_int3_is_told_apart_by_the_first_fault():
    found = kernel_log.faults(INT3)
    assert found == ["Oops: int3: 0000 [#1] SMP NOPTI", "Kernel panic - not syncing: Fatal exception in interrupt"]
    assert kernel_log.emulator_fault(found)
    # A WARNING before the int3 is a fault of its own: not the emulator's.
    assert not kernel_log.emulator_fault(kernel_log.faults(WARN + INT3))


def test_console_log_without_facilities():
    console = re.sub(r"(?m)^\w+ *:\w+ *: ", "", CLEAN + INT3)
    console += "\n[[0;32m  OK  [0m] Reached target multi-user.target - Multi-User System.\n"
    found = kernel_log.console_faults(console)
    assert found == ["Oops: int3: 0000 [#1] SMP NOPTI", "Kernel panic - not syncing: Fatal exception in interrupt"]
    assert kernel_log.emulator_fault(found)
