"""The foundation's host-tier tests again, on the 7.x kernel with every controller enabled.

Same tests, same assertions (tests/host/test_tree.py); here the agent and tool-call
cgroups also carry real memory/cpu/pids limits, checked below. Only the tests whose
behaviour depends on the kernel's controllers run here (race-free placement, freeze and
kill, limits): the guest runs Python ~5x slower under emulation and the whole tier has a
10-minute budget; the rest of test_tree.py (re-adoption, standalone, stragglers) is pure
cgroupfs and runs on the host tier.
"""

import subprocess

import pytest

from tests.helpers import agentd_cmd
from tests.host.test_tree import (  # noqa: F401  (collected here under the kernel marker)
    test_fork_storm_is_fully_contained, test_freeze_and_kill_tool_call_agent_lives_on)

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def daemon(cgfs, tmp_path_factory):
    """One daemon for the module: starting Python daemons is slow in the emulated guest."""
    import os

    from tests.helpers import DaemonProc, kill_tree
    root = f"agentd-ktest-{os.getpid()}"
    d = DaemonProc(str(tmp_path_factory.mktemp("daemon")), root)
    d.start(timeout=180)
    yield d
    d.cleanup()
    kill_tree(cgfs, root)


def test_limits_are_real_files_here(daemon, cgfs):
    """The limits the daemon says it applied are what the kernel's files hold."""
    # The inner script travels as $0 of the agent's shell, so no shell expands it early.
    inner = ('d=/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup); '
             'cat $d/memory.max $d/cpu.weight $d/pids.max $d/../../cgroup.subtree_control')
    r = subprocess.run(agentd_cmd() + ["run", "--name", "lim", "--", "bash", "-c",
                                       '"$@" tool -- sh -c "$0"', inner, *agentd_cmd()],
                       capture_output=True, text=True, env=daemon.env, timeout=300)
    assert r.returncode == 0, r.stderr
    mem_max, weight, pids_max, subtree = r.stdout.split("\n")[:4]
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "lim", timeout=60)
    limits = ev["limits"]
    assert mem_max == limits["memory.max"] and mem_max != "max"
    assert pids_max == limits["pids.max"] and pids_max != "max"
    # cpu.weight is written by the CPU-priority stage (agentd/sched), from the same policy.
    assert 1 <= int(weight) <= 10000
    assert {"memory", "cpu", "pids"} <= set(subtree.split())


def test_daemon_sits_in_its_protected_leaf(daemon, cgfs):
    """The daemon moves into <root>/daemon and keeps memory.min there (and on <root>), so it
    keeps reacting when agents push the host into memory pressure."""
    leaf = f"{daemon.root}/daemon"
    assert daemon.proc.pid in cgfs.procs(leaf)
    assert cgfs.read_int(leaf, "memory.min") >= 64 << 20
    assert cgfs.read_int(daemon.root, "memory.min") >= 64 << 20
