"""The foundation's host-tier tests again, on the 7.x kernel with every controller enabled.

Same tests, same assertions (tests/host/test_tree.py); here the agent and tool-call
cgroups also carry real memory/cpu/pids limits, checked below.
"""

import subprocess

import pytest

from tests.helpers import agentd_cmd
from tests.host.test_tree import (  # noqa: F401  (collected here under the kernel marker)
    test_daemon_kill9_and_restart_readopts_running_tool, test_fork_storm_is_fully_contained,
    test_freeze_and_kill_tool_call_agent_lives_on, test_run_places_agent_and_propagates_status,
    test_standalone_run_without_daemon, test_stragglers_are_killed_and_nothing_is_left,
    test_tool_call_gets_its_own_cgroup_and_event)

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
    # The inner script travels as $0 of the agent's shell, so no shell expands it early.
    inner = ('d=/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup); '
             'cat $d/memory.max $d/cpu.weight $d/pids.max $d/../../cgroup.subtree_control')
    r = subprocess.run(agentd_cmd() + ["run", "--name", "lim", "--", "bash", "-c",
                                       '"$@" tool --class batch -- sh -c "$0"', inner, *agentd_cmd()],
                       capture_output=True, text=True, env=daemon.env, timeout=120)
    assert r.returncode == 0, r.stderr
    mem_max, weight, pids_max, subtree = r.stdout.split("\n")[:4]
    assert mem_max != "max" and int(mem_max) > 0          # batch: 75% of guest memory
    assert weight == "50" and pids_max == "4096"
    assert {"memory", "cpu", "pids"} <= set(subtree.split())
