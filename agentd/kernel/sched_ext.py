"""The sched_ext sysfs interface and the per-task scheduling calls agentd makes.

- /sys/kernel/sched_ext/state: enabled | disabled | enabling | disabling, the kernel's
  own view of whether a BPF scheduler runs (6.12+). `root/ops` names the loaded one.
- SCHED_EXT (policy 7): with a scheduler loaded in partial mode
  (SCX_OPS_SWITCH_PARTIAL) only tasks of this policy are scheduled by it; without one
  they run in the fair class, so setting it early is harmless. Children inherit it.
- nice: the last-resort CPU priority on hosts whose cgroup v2 tree has no cpu
  controller.

Every call names the task by thread id; a task that exits meanwhile is a normal
outcome (False), not an error.
"""

import errno
import os

from ..errors import FeatureMissing, KernelError

SCHED_EXT = 7
SCHED_NORMAL = 0
SYSFS = "/sys/kernel/sched_ext"


class SchedExtSysfs:
    """Reads /sys/kernel/sched_ext (a parameter, so tests can point it at a fixture)."""

    def __init__(self, root=SYSFS):
        self.root = root

    def available(self):
        return os.path.exists(os.path.join(self.root, "state"))

    def _read(self, name):
        try:
            with open(os.path.join(self.root, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def state(self):
        """enabled | disabled | enabling | disabling; None without sched_ext."""
        return self._read("state")

    def ops_name(self):
        """Name of the loaded BPF scheduler (None when none is loaded)."""
        return self._read("root/ops")


def set_ext_policy(tid):
    """Move thread `tid` to SCHED_EXT (keeping nice). False if it is gone.

    Raises FeatureMissing when the kernel has no SCHED_EXT policy (EINVAL)."""
    try:
        os.sched_setscheduler(tid, SCHED_EXT, os.sched_param(0))
    except ProcessLookupError:
        return False
    except OSError as err:
        if err.errno == errno.EINVAL:
            raise FeatureMissing("the kernel has no SCHED_EXT policy (CONFIG_SCHED_CLASS_EXT unset)") from err
        raise KernelError(f"sched_setscheduler({tid}, SCHED_EXT): {err.strerror}") from err
    return True


def policy_of(tid):
    """The scheduling policy number of `tid` (7 = SCHED_EXT); None if it is gone."""
    try:
        return os.sched_getscheduler(tid)
    except ProcessLookupError:
        return None


def set_nice(tid, nice):
    """Set the nice value of thread `tid`; False if it is gone."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, int(nice))
    except ProcessLookupError:
        return False
    except OSError as err:
        raise KernelError(f"setpriority({tid}, {nice}): {err.strerror}") from err
    return True


def get_nice(tid):
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except ProcessLookupError:
        return None


def threads(fs, cg):
    """Thread ids in cgroup `cg` (cgroup.threads), [] if the cgroup is gone."""
    try:
        text = fs.read(cg, "cgroup.threads")
    except KernelError:
        return []
    return [int(x) for x in text.split()]
