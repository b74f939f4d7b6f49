"""A daemon killed without a chance to clean up (SIGKILL, a watchdog's SIGABRT) takes its
sched_ext scheduler with it: the scheduler is registered through a BPF link, which the
kernel releases with the dead process's descriptors, so the next daemon loads its own."""

import os
import signal

import pytest

from agentd.kernel import sched_ext as kse

from ..helpers import DaemonProc
from .kernel_support import wait_for

pytestmark = pytest.mark.kernel

SYSFS = kse.SchedExtSysfs()


def loaded(e):
    return e.get("event") == "sched_ext_loaded"


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_a_killed_daemons_scheduler_is_unregistered_and_the_next_daemon_loads_its_own(tmp_path, sig):
    assert SYSFS.state() == "disabled"
    root = f"agentd-test-{os.getpid()}-scxkill"
    first = DaemonProc(str(tmp_path / "first"), root)
    os.makedirs(first.tmp, exist_ok=True)
    second = None
    try:
        first.start()
        first.wait_event(loaded, timeout=120)
        assert SYSFS.state() == "enabled" and SYSFS.ops_name() == "agentd"
        first.proc.send_signal(sig)
        first.proc.wait()
        # Registered by a plain map update, the dead daemon's scheduler stayed loaded here.
        wait_for(lambda: SYSFS.state() == "disabled", 30,
                 f"sched_ext disabled once the daemon died of signal {sig}")
        second = DaemonProc(str(tmp_path / "second"), root)
        os.makedirs(second.tmp, exist_ok=True)
        second.start()
        second.wait_event(loaded, timeout=120)
        assert SYSFS.state() == "enabled" and SYSFS.ops_name() == "agentd"
        assert not [e for e in second.events() if e.get("event") == "sched_ext_ejected"]
    finally:
        for d in (second, first):
            if d is not None:
                d.cleanup()
        wait_for(lambda: SYSFS.state() == "disabled", 30, "sched_ext disabled after the test's daemons stopped")
        from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
        fs = CgroupFS(find_cgroup2_mount())
        fs.destroy(root, 10)
