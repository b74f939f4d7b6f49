"""The API's identity checks over fakes: a named child is held from its check, checked
again after admission, and never moved or written once its pid names another process;
an admin inside an agent has that agent's rights only. (tests/host/test_trust_identity.py
plays the same attacks on the real kernel.)"""

import asyncio
import types

import pytest

from agentd.api.ops import ApiOps
from agentd.controller import Controller
from agentd.stages import Stage
from agentd.errors import RequestError
from agentd.eventlog import EventLog
from agentd.kernel import cgroupfs as cgf
from agentd.kernel.fakes import FakeCgroupFS, FakeProc
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy
from agentd.state import StateStore

CALLER, CHILD = 4000, 4001


class Proc:
    def __init__(self, cgroups):
        self.cgroups = cgroups        # pid -> cgroup path
        self.held = {}
        self.oom = {}

    def cgroup(self, pid):
        return self.cgroups[pid]

    def ppid(self, pid):
        return CALLER

    def has_capability(self, pid, bit):
        return False

    def set_oom_score_adj(self, pid, value):
        self.oom[pid] = value

    def hold(self, pid):
        self.held[pid] = FakeProc(pid)
        return self.held[pid]


class Waits(Stage):
    """A stage whose admission runs `fn` (what happens while a call waits)."""

    def __init__(self, fn):
        self.fn = fn

    async def admit(self, call, tell):
        await self.fn(call, tell)


class Ops(ApiOps):
    def __init__(self, ctl, admit=None):
        self.ctl, self.fs, self.procfs = ctl, ctl.fs, ctl.procfs
        self.hooks = ctl.hooks = [Waits(admit)] if admit else []
        self.server = types.SimpleNamespace(is_admin=lambda conn: conn.uid == 0, group=None)
        self.cfg = types.SimpleNamespace(standalone=False)


def _ops(tmp_path, admit=None, caller_cg="/agentd/agents/ag/main"):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    policy = load_policy("default", host_memory_bytes=1 << 34)     # its rules: git is interactive
    proc = Proc({CALLER: caller_cg, CHILD: caller_cg})
    ctl = Controller(fs, "agentd", types.SimpleNamespace(sys_resource=False), Planner(policy, 1 << 34),
                     StateStore(str(tmp_path / "st")), EventLog(str(tmp_path / "ev.jsonl")), proc)
    ctl.setup()
    ctl.create_agent("ag")
    ctl.create_agent("other")
    return Ops(ctl, admit)


def _conn(uid=1000):
    peer = FakeProc(CALLER)
    return types.SimpleNamespace(pid=CALLER, uid=uid, gid=uid, tools=set(), agent=None, proc=peer,
                                 verify_peer=peer.verify, peer_alive=peer.alive)


def _moves(fs):
    return [w for w in fs.writes if w[1] == cgf.PROCS]


def test_a_child_that_exits_while_admission_waits_is_not_placed(tmp_path):
    async def admit(call, tell):
        ops.procfs.held[CHILD].exit()        # its pid may name anyone from now on
    ops = _ops(tmp_path, admit)
    with pytest.raises(RequestError) as err:
        asyncio.run(ops.op_tool_start(_conn(), {"pid": CHILD, "argv": ["sleep", "1"]}))
    assert err.value.code == "gone"
    assert _moves(ops.fs) == [] and ops.procfs.oom == {}
    assert not ops.ctl.agents["ag"].tools


def test_a_caller_that_exits_while_admission_waits_is_refused(tmp_path):
    conn = _conn()

    async def admit(call, tell):
        conn.proc.exit()
    ops = _ops(tmp_path, admit)
    with pytest.raises(RequestError) as err:
        asyncio.run(ops.op_tool_start(conn, {"pid": CHILD, "argv": ["sleep", "1"]}))
    assert err.value.code == "gone" and _moves(ops.fs) == []


def test_a_live_child_is_placed_and_its_hold_released(tmp_path):
    ops = _ops(tmp_path)
    reply = asyncio.run(ops.op_tool_start(_conn(), {"pid": CHILD, "argv": ["sleep", "1"]}))
    assert _moves(ops.fs) == [(f"agentd/agents/ag/tools/{reply['tool']}", cgf.PROCS, str(CHILD))]
    assert CHILD in ops.procfs.oom


def test_root_inside_an_agent_has_that_agents_rights_only(tmp_path):
    ops = _ops(tmp_path)
    for op, req in (("op_run_done", {"agent": "other"}), ("op_reload", {}),
                    ("op_run_start", {"pid": CHILD})):
        with pytest.raises(RequestError) as err:
            asyncio.run(getattr(ops, op)(_conn(uid=0), req))
        assert err.value.code == "forbidden", op
    assert "other" in ops.ctl.agents
    with pytest.raises(RequestError):
        asyncio.run(ops.op_status(_conn(uid=0), {"agent": "other"}))


def test_root_outside_every_agent_is_admin(tmp_path):
    ops = _ops(tmp_path, caller_cg="/user.slice")
    assert ops._is_admin(_conn(uid=0))
    assert not ops._is_admin(_conn(uid=1000))


def test_what_runs_may_lower_a_declared_class_never_raise_it(tmp_path):
    ops = _ops(tmp_path)
    ctl = ops.ctl
    agent = ctl.agents["ag"]
    liar = ctl.start_tool(agent, None, ["git", "status"])
    assert liar.plan.tool_class == "interactive"
    assert ctl.reclassify(liar, ["/usr/bin/python3", "-c", "pass"], "test") == "normal"
    assert liar.plan.tool_class == "normal" and liar.plan.priority == 50
    assert ctl.fs.read(liar.cgroup, cgf.MEMORY_MAX).strip() == liar.plan.limits[cgf.MEMORY_MAX]
    humble = ctl.start_tool(agent, None, ["python3", "-c", "pass"])
    assert ctl.reclassify(humble, ["/usr/bin/git", "status"], "test") is None
    assert humble.plan.tool_class == "normal"
    ev = [line for line in open(tmp_path / "ev.jsonl") if "tool_reclassify" in line]
    assert len(ev) == 1 and '"old_class": "interactive"' in ev[0].replace('":"', '": "')
