"""agentd.sched: weights from policy, map entries as agents and tool calls come and go,
the fallbacks, and the ejection -> fallback -> retry cycle (with a scripted scheduler)."""

import asyncio
import os
import subprocess
import types

import pytest

from agentd.errors import BpfError
from agentd.kernel import cgroupfs as cgf
from agentd.kernel.fakes import FakeCgroupFS
from agentd.kernel.probe import Capabilities
from agentd.model import Agent, ToolCall, ToolPlan
from agentd.policy import load_policy_text
from agentd.sched import hook as hook_mod
from agentd.sched.hook import CpuScheduler
from agentd.sched.weights import SlotTable, agent_weight, nice_for_weight, tool_weight

POLICY = """
version: 1
agent_classes:
  normal: {}
  heavy: {cpu: {weight: 400}}
  vip: {priority: 300}
tool_classes:
  interactive: {priority: 80, latency: interactive, cpu: {weight: 200}}
  normal: {priority: 50}
  batch: {priority: 20, latency: batch, cpu: {weight: 50}}
  lowprio: {priority: 10, latency: batch}
tool_rules:
  - name: bigbuild
    match: {program: [make]}
    class: batch
    cpu: {weight: 700}
"""


@pytest.fixture
def policy():
    return load_policy_text(POLICY, host_memory_bytes=8 << 30)


def agent(name="a1", cls="normal", priority=50):
    return Agent(agent_id=name, cgroup=f"agentd/agents/{name}", agent_class=cls, priority=priority)


def tool(ag, seq, cls, priority, latency="normal", rule=None, pid=None):
    plan = ToolPlan(tool_class=cls, priority=priority, limits={}, rule=rule, latency=latency)
    tid = f"{seq:04d}-{cls}"
    return ToolCall(agent_id=ag.agent_id, tool_id=tid, cgroup=f"{ag.tools_cgroup}/{tid}", argv=["x"], plan=plan,
                    pid=pid)


# --- weights ---------------------------------------------------------------------------------

def test_agent_weight_is_the_class_weight_else_twice_the_priority(policy):
    assert agent_weight(policy, agent(cls="normal", priority=50)) == 100
    assert agent_weight(policy, agent(cls="heavy", priority=50)) == 400
    assert agent_weight(policy, agent(cls="vip", priority=300)) == 600


def test_tool_weight_rule_then_class_then_priority(policy):
    a = agent()
    assert tool_weight(policy, tool(a, 1, "interactive", 80, "interactive")) == 200
    assert tool_weight(policy, tool(a, 2, "batch", 20, "batch")) == 50
    assert tool_weight(policy, tool(a, 3, "lowprio", 10, "batch")) == 20
    assert tool_weight(policy, tool(a, 4, "batch", 20, "batch", rule="bigbuild")) == 700
    assert tool_weight(policy, tool(a, 5, "normal", 50)) == 100


def test_nice_follows_the_kernel_weight_steps_and_never_boosts():
    assert nice_for_weight(100) == 0
    assert nice_for_weight(50) == 3          # 1.25^3 = 1.95
    assert nice_for_weight(10) == 10
    assert nice_for_weight(1) == 19
    assert nice_for_weight(800) == 0
    assert [nice_for_weight(w) for w in (100, 80, 64, 51)] == [0, 1, 2, 3]


def test_slot_table_reuses_freed_slots_and_overflows_to_zero():
    t = SlotTable(size=4)
    assert [t.take("a"), t.take("b"), t.take("c")] == [1, 2, 3]
    assert t.take("a") == 1
    assert t.take("d") == 0
    assert t.release("b") == 2
    assert t.take("e") == 2


# --- the hook with a scripted scheduler ------------------------------------------------------

class FakeScx:
    """Records map writes like ScxScheduler's maps; `eject()` simulates the kernel."""

    def __init__(self, config):
        self.config = config
        self.agents, self.cgroups = {}, {}
        self.closed = False
        self.alive = True
        self.loaded_at = 0.0
        self.reason = None

    def set_agent(self, slot, weight):
        self.agents[slot] = weight

    def clear_agent(self, slot):
        self.agents[slot] = 0

    def set_cgroup(self, cid, slot, weight, latency):
        self.cgroups[cid] = (slot, weight, latency)

    def delete_cgroup(self, cid):
        return self.cgroups.pop(cid, None) is not None

    def running(self):
        return self.alive

    def exit_reason(self):
        return self.reason

    def eject(self, reason):
        self.alive, self.reason = False, reason

    def stats(self):
        return {}

    def close(self):
        self.closed = True


class Loader:
    def __init__(self, fail=0):
        self.made, self.fail = [], fail

    def __call__(self, config):
        if self.fail:
            self.fail -= 1
            raise BpfError("loading scx_agentd.bpf.o: Invalid argument")
        s = FakeScx(config)
        self.made.append(s)
        return s


class Events:
    def __init__(self):
        self.emitted = []

    def emit(self, kind, **kw):
        self.emitted.append((kind, kw))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(tmp_path, policy, sched_ext=True, controllers=("cpu", "memory"), loader=None, scheduler=None):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    caps = Capabilities(root_user=True, cgroup2_mount=fs.mount, controllers=tuple(controllers), sched_ext=sched_ext,
                        sched_ext_state="disabled" if sched_ext else None)
    if scheduler:
        policy = policy.model_copy(update={"cpu": policy.cpu.model_copy(update={"scheduler": scheduler})})
    app = types.SimpleNamespace(fs=fs, caps=caps, policy=policy, events=Events())
    h = CpuScheduler(app, loader=loader or Loader(), clock=Clock())
    return app, h


async def _start(h):
    await h.start()
    h.task.cancel()
    h.task = None


def mkdirs(fs, ag, *tools):
    fs.makedirs("agentd/agents")
    for cg in (ag.cgroup, ag.main_cgroup, ag.tools_cgroup, *[t.cgroup for t in tools]):
        fs.mkdir(cg)


def test_map_entries_follow_agents_and_tool_calls(tmp_path, policy):
    app, h = make(tmp_path, policy)
    loader = h.loader
    asyncio.run(_start(h))
    assert h.modes() == {"cpu": "sched_ext"}
    scx = loader.made[0]
    assert list(scx.config.slice_ns) == [1_000_000, 5_000_000, 20_000_000]

    a = agent("a1", "heavy")
    b = agent("b1", "normal")
    t = tool(a, 1, "batch", 20, "batch")
    mkdirs(app.fs, a, t)
    mkdirs(app.fs, b)
    h.on_agent_start(a)
    h.on_agent_start(b)
    main_a, main_b = app.fs.cgroup_id(a.main_cgroup), app.fs.cgroup_id(b.main_cgroup)
    assert scx.agents == {1: 400, 2: 100}
    assert scx.cgroups == {main_a: (1, 100, "interactive"), main_b: (2, 100, "interactive")}

    t.run.cgroup_id = app.fs.cgroup_id(t.cgroup)
    h.on_tool_start(a, t)
    assert scx.cgroups[t.cgroup_id] == (1, 50, "batch")
    h.on_tool_end(a, t, {})
    assert t.cgroup_id not in scx.cgroups

    h.on_agent_end(a)
    assert scx.cgroups == {main_b: (2, 100, "interactive")}
    assert scx.agents[1] == 0
    # The freed slot goes to the next agent.
    c = agent("c1")
    mkdirs(app.fs, c)
    h.on_agent_start(c)
    assert scx.agents[1] == 100

    asyncio.run(h.stop())
    assert scx.closed


def test_an_ended_calls_entry_stays_while_its_leftover_processes_run(tmp_path, policy):
    """An agent of a light class leaves `sleep 1000 &`-like work in a call whose class lets
    stragglers run: the call ends, its processes stay in its cgroup. Were its entry deleted,
    sched_ext would run them in the default slot, outside the agent's weight; it stays until
    the kernel's cgroup.events says the cgroup is empty, and the next watch pass deletes it."""
    app, h = make(tmp_path, policy)
    asyncio.run(_start(h))
    scx = h.loader.made[0]
    a = agent("a1", "heavy")
    t = tool(a, 1, "batch", 20, "batch")
    mkdirs(app.fs, a, t)
    h.on_agent_start(a)
    t.run.cgroup_id = app.fs.cgroup_id(t.cgroup)
    h.on_tool_start(a, t)
    events = app.fs.path(t.cgroup, cgf.EVENTS)
    with open(events, "w") as f:
        f.write("populated 1\nfrozen 0\n")
    h.on_tool_end(a, t, {})
    assert scx.cgroups[t.cgroup_id] == (1, 50, "batch")
    h.check()
    assert scx.cgroups[t.cgroup_id] == (1, 50, "batch")
    with open(events, "w") as f:
        f.write("populated 0\nfrozen 0\n")
    h.check()
    assert t.cgroup_id not in scx.cgroups
    assert t.cgroup not in h.prios

    # The agent's end takes a lingering call's entry with it.
    t2 = tool(a, 2, "batch", 20, "batch")
    app.fs.mkdir(t2.cgroup)
    t2.run.cgroup_id = app.fs.cgroup_id(t2.cgroup)
    h.on_tool_start(a, t2)
    with open(app.fs.path(t2.cgroup, cgf.EVENTS), "w") as f:
        f.write("populated 1\nfrozen 0\n")
    h.on_tool_end(a, t2, {})
    h.on_agent_end(a)
    assert scx.cgroups == {} and not h.lingering
    asyncio.run(h.stop())


def test_agents_known_before_start_are_written_at_start(tmp_path, policy):
    app, h = make(tmp_path, policy)
    a = agent("early")
    mkdirs(app.fs, a)
    h.on_agent_start(a)          # e.g. re-adopted agents, before the hooks start
    asyncio.run(_start(h))
    scx = h.loader.made[0]
    assert scx.agents == {1: 100}
    assert scx.cgroups == {app.fs.cgroup_id(a.main_cgroup): (1, 100, "interactive")}


def test_without_sched_ext_weights_go_to_cpu_weight(tmp_path, policy, caplog):
    app, h = make(tmp_path, policy, sched_ext=False)
    asyncio.run(_start(h))
    assert h.modes() == {"cpu": "cpu_weight"}
    assert h.loader.made == []
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cpu.weight" in warnings[0].getMessage()
    a = agent("a1", "vip", priority=300)
    t = tool(a, 1, "interactive", 80, "interactive")
    mkdirs(app.fs, a, t)
    h.on_agent_start(a)
    h.on_tool_start(a, t)
    assert app.fs.read(a.cgroup, cgf.CPU_WEIGHT) == "600"
    assert app.fs.read(a.main_cgroup, cgf.CPU_WEIGHT) == "100"
    assert app.fs.read(t.cgroup, cgf.CPU_WEIGHT) == "200"
    assert h.metric_stats() == {"cpu_scheduler": "cpu_weight", "sched_ext_ejections": 0}


def test_policy_weights_mode_never_loads_bpf(tmp_path, policy):
    app, h = make(tmp_path, policy, scheduler="weights")
    asyncio.run(_start(h))
    assert h.loader.made == [] and h.modes() == {"cpu": "cpu_weight"}


def test_policy_none_turns_cpu_priorities_off(tmp_path, policy):
    app, h = make(tmp_path, policy, scheduler="none")
    asyncio.run(_start(h))
    a = agent()
    t = tool(a, 1, "batch", 20, "batch")
    mkdirs(app.fs, a, t)
    h.on_agent_start(a)
    h.on_tool_start(a, t)
    assert h.modes() == {"cpu": "none"}
    assert not [w for w in app.fs.writes if w[1] == cgf.CPU_WEIGHT]


def test_without_cpu_controller_tool_calls_get_nice(tmp_path, policy):
    app, h = make(tmp_path, policy, sched_ext=False, controllers=())
    asyncio.run(_start(h))
    assert h.modes() == {"cpu": "nice"}
    a = agent("a1", "normal")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        t = tool(a, 1, "batch", 20, "batch", pid=proc.pid)
        mkdirs(app.fs, a, t)
        h.on_agent_start(a)
        h.on_tool_start(a, t)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == nice_for_weight(50) == 3
    finally:
        proc.kill()
        proc.wait()


def test_ejection_falls_back_counts_and_retries_with_backoff(tmp_path, policy, caplog):
    app, h = make(tmp_path, policy)
    asyncio.run(_start(h))
    a = agent("a1", "heavy")
    mkdirs(app.fs, a)
    h.on_agent_start(a)
    first = h.loader.made[0]

    h.check()                                   # healthy: nothing changes
    assert h.modes()["cpu"] == "sched_ext" and h.ejections == 0

    first.eject("stall (watchdog): runnable task stall")
    h.check()
    assert first.closed
    assert h.modes()["cpu"] == "cpu_weight"
    assert h.metric_stats() == {"cpu_scheduler": "cpu_weight", "sched_ext_ejections": 1}
    assert app.fs.read(a.cgroup, cgf.CPU_WEIGHT) == "400"
    kinds = [k for k, _ in app.events.emitted]
    assert "sched_ext_ejected" in kinds
    assert any("runnable task stall" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert h.status()["retry_in_s"] == policy.cpu.retry_backoff_s

    h.clock.t += policy.cpu.retry_backoff_s - 0.1
    h.check()
    assert len(h.loader.made) == 1              # not yet
    h.clock.t += 0.2
    h.check()
    second = h.loader.made[1]
    assert h.modes()["cpu"] == "sched_ext"
    assert second.agents == {1: 400}
    assert second.cgroups == {app.fs.cgroup_id(a.main_cgroup): (1, 100, "interactive")}

    second.eject("error: runtime error")        # a second ejection doubles the wait
    h.check()
    assert h.ejections == 2
    assert h.status()["retry_in_s"] == 2 * policy.cpu.retry_backoff_s


def test_a_failed_load_falls_back_and_is_retried(tmp_path, policy):
    app, h = make(tmp_path, policy, loader=Loader(fail=1))
    asyncio.run(_start(h))
    assert h.modes()["cpu"] == "cpu_weight"
    h.clock.t += policy.cpu.retry_backoff_s
    h.check()
    assert h.modes()["cpu"] == "sched_ext"
    assert h.loads == 1


def test_backoff_is_capped(tmp_path, policy):
    app, h = make(tmp_path, policy, loader=Loader(fail=100))
    asyncio.run(_start(h))
    for _ in range(20):
        h.clock.t = h.retry_at
        h.check()
    assert h.backoff == hook_mod.MAX_BACKOFF_S
