"""The kernel OOM killer's order agentd sets: agents last, then by agent priority, then class."""

from agentd import oom


def test_agents_are_below_every_tool_call():
    assert oom.main_adj(False) < min(oom.tool_adj(a, t) for a in (0, 1000) for t in (0, 1000))
    assert oom.main_adj(False) > -1000          # killable as the very last resort
    assert oom.main_adj(True) == 0


def test_the_agent_priority_dominates_the_call_class():
    high_batch = oom.tool_adj(800, 20)
    low_interactive = oom.tool_adj(100, 80)
    assert low_interactive > high_batch
    assert oom.tool_adj(100, 20) > oom.tool_adj(100, 80)      # within an agent: the class


def test_values_stay_in_the_kernel_range():
    for a in (-5, 0, 500, 1000, 5000):
        for t in (-5, 0, 1000, 5000):
            assert 0 <= oom.tool_adj(a, t) <= 1000


# --- who writes a tool call's value: the floor (oom_score_adj_min) must be pinned ---------

import asyncio
import types

import pytest

from agentd.api.ops import ApiOps
from agentd.controller import Controller
from agentd.eventlog import EventLog
from agentd.kernel.fakes import FakeCgroupFS, FakeProc
from agentd.kernel.procfs import CAP_SYS_RESOURCE
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore

LAUNCHER = 4000


class Proc:
    """/proc of a launcher in agent `ag`, with or without CAP_SYS_RESOURCE."""

    def __init__(self, caps):
        self.caps = caps
        self.oom = {}

    def cgroup(self, pid):
        return "/agentd/agents/ag/main"

    def ppid(self, pid):
        return LAUNCHER

    def has_capability(self, pid, bit):
        return bit in self.caps.get(pid, ())

    def set_oom_score_adj(self, pid, value):
        self.oom[pid] = value

    def hold(self, pid):
        return FakeProc(pid)


class Ops(ApiOps):
    def __init__(self, ctl):
        self.ctl, self.fs, self.procfs, self.hooks = ctl, ctl.fs, ctl.procfs, []


def _ops(tmp_path, daemon_caps, launcher_caps):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    policy = load_policy_text("version: 1\n", "t.yaml", host_memory_bytes=1 << 34)
    proc = Proc({LAUNCHER: launcher_caps})
    caps = types.SimpleNamespace(sys_resource=daemon_caps)
    ctl = Controller(fs, "agentd", caps, Planner(policy, 1 << 34), StateStore(str(tmp_path / "st")),
                     EventLog(str(tmp_path / "ev.jsonl")), proc)
    ctl.setup()
    ctl.create_agent("ag")
    return Ops(ctl)


def _start(ops):
    peer = FakeProc(LAUNCHER)
    conn = types.SimpleNamespace(pid=LAUNCHER, tools=set(), proc=peer, verify_peer=peer.verify,
                                 peer_alive=peer.alive)
    return asyncio.run(ops.op_tool_start(conn, {"argv": ["sh", "-c", "true"]})), conn


@pytest.mark.parametrize("launcher_caps", [(), (CAP_SYS_RESOURCE,)])
def test_a_launcher_whose_own_write_would_not_pin_the_floor_gets_no_cgroup_to_clone_into(tmp_path, launcher_caps):
    """A launcher without CAP_SYS_RESOURCE that cloned into the cgroup and set the call's
    value itself would leave the agent's floor (-800) under it: the call could lower
    itself back. It gets no path, holds its child, and the daemon writes the value when
    it attaches the child, which pins the floor. One that holds the capability pins it
    by its own write and keeps the cheaper clone."""
    ops = _ops(tmp_path, daemon_caps=True, launcher_caps=launcher_caps)
    reply, conn = _start(ops)
    assert ("path" in reply) == bool(launcher_caps)
    tool = ops.ctl.agents["ag"].tools[reply["tool"]]
    child = 4001
    asyncio.run(ops.op_tool_attach(conn, {"agent": "ag", "tool": tool.tool_id, "pid": child}))
    agent = ops.ctl.agents["ag"]
    assert ops.procfs.oom[child] == int(reply["oom_score_adj"]) == oom.tool_adj(agent.priority, tool.plan.priority)


def test_a_daemon_that_cannot_pin_the_floor_lets_every_launcher_clone(tmp_path):
    """Without CAP_SYS_RESOURCE the daemon's write pins nothing either (the start-up
    warning says so): a move would cost a grace period for nothing."""
    reply, _ = _start(_ops(tmp_path, daemon_caps=False, launcher_caps=()))
    assert reply["path"].endswith(reply["cgroup"])
