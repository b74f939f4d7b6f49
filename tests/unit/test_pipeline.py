"""The tool-call pipeline: a call is planned once, each stage admits and places it, and
what they decided is one frozen Placement the controller applies, on the API path and
the automatic path alike."""

import asyncio
import dataclasses
import os
import types

import pytest

from agentd.kernel import cgroupfs as cgf
from agentd.model import Placement, ToolPlan
from agentd.pipeline import Call, Share, merge
from agentd.policy.planner import Planner
from agentd.stages import Stage, StageProtocol
from tests.unit.test_metrics import App, real_stages

GiB = 1 << 30


@pytest.fixture
def counted(monkeypatch):
    """How often a tool call is planned (Planner.plan_tool), per argv."""
    calls = []
    real = Planner.plan_tool

    def plan_tool(self, agent, argv, declared_class=None, mem=None):
        calls.append(tuple(argv))
        return real(self, agent, argv, declared_class, mem)
    monkeypatch.setattr(Planner, "plan_tool", plan_tool)
    return calls


def test_an_api_call_is_planned_once_through_every_stage(tmp_path, counted):
    app = App(tmp_path)
    stages, _, _ = real_stages(app)
    agent = app.ctl.create_agent("ag", None)

    async def start():
        ticket = await app.ctl.pipeline.admit(agent, ["train.py"], "train", pid=4400)
        return app.ctl.start_tool(agent, 4400, ["train.py"], "train", ticket=ticket)
    tool = asyncio.run(start())
    assert counted == [("train.py",)]            # admission, memory, GPU and the controller share it
    p = tool.placement
    assert p.forecast is not None and p.limits[cgf.MEMORY_HIGH] == tool.limits_applied[cgf.MEMORY_HIGH]
    assert p.gpu["outcome"] == "gpu" and "CUDA_VISIBLE_DEVICES" in p.env and p.messages
    assert tool.env == dict(p.env) and tool.messages == list(p.messages)


def test_an_automatic_call_is_planned_once_and_never_waits(tmp_path, counted):
    app = App(tmp_path)
    stages, detect, _ = real_stages(app)
    agent = app.ctl.create_agent("ag", None)
    detect(agent, ["pytest", "-q"])
    tool = next(t for t in agent.tools.values() if t.origin == "auto")
    assert counted == [("pytest", "-q")]
    assert tool.plan.tool_class == "batch" and tool.placement.limits[cgf.MEMORY_MAX] == str(GiB)
    assert cgf.MEMORY_HIGH in tool.limits_applied                # the forecast, decided now


def test_the_plan_and_the_placement_are_frozen(tmp_path):
    app = App(tmp_path)
    agent = app.ctl.create_agent("ag", None)
    tool = app.ctl.start_tool(agent, None, ["make"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        tool.plan.tool_class = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tool.placement.env = {}
    with pytest.raises(TypeError):
        tool.placement.limits[cgf.MEMORY_MAX] = "1"
    with pytest.raises(AttributeError):
        tool.conn = object()          # not a declared field: a stage keeps its own state
    with pytest.raises(AttributeError):
        agent.watch_id = 7


def test_later_stages_win_a_limit_and_every_share_is_kept():
    plan = ToolPlan("normal", 50, {cgf.MEMORY_MAX: "max", cgf.CPU_WEIGHT: "100"})
    p = merge(plan, [Share(limits={cgf.MEMORY_HIGH: "100"}, env={"A": "1"}, messages=("one",),
                           actions=({"action": "queue"},), forecast="fc"),
                     None,
                     Share(limits={cgf.CPU_WEIGHT: "300"}, env={"B": "2"}, messages=("two",), offload_cpu_weight=300,
                           gpu={"outcome": "offload"})])
    assert isinstance(p, Placement)
    assert dict(p.limits) == {cgf.MEMORY_MAX: "max", cgf.CPU_WEIGHT: "300", cgf.MEMORY_HIGH: "100"}
    assert dict(p.env) == {"A": "1", "B": "2"} and p.messages == ("one", "two")
    assert p.actions == ({"action": "queue"},) and p.forecast == "fc" and p.offload_cpu_weight == 300
    assert plan.limits == {cgf.MEMORY_MAX: "max", cgf.CPU_WEIGHT: "100"}    # the plan itself unchanged


def test_a_stage_that_fails_to_place_costs_its_share_not_the_call(tmp_path, caplog):
    app = App(tmp_path)

    class Broken(Stage):
        def place(self, call, decided):
            raise RuntimeError("bug")

    class Weighs(Stage):
        def place(self, call, decided):
            return Share(limits={cgf.CPU_WEIGHT: "42"})
    app.ctl.hooks = [Broken(), Weighs()]
    agent = app.ctl.create_agent("ag", None)
    tool = app.ctl.start_tool(agent, None, ["make"])
    assert tool.limits_applied[cgf.CPU_WEIGHT] == "42"
    assert "Broken.place failed" in caplog.text


def test_every_daemon_stage_implements_the_declared_interface(tmp_path):
    from agentd.metrics.samples import SampleLog
    from agentd.swap import SwapStage
    app = App(tmp_path)
    stages, _, _ = real_stages(app)
    for s in list(stages) + [SampleLog(app), SwapStage(lambda: app.policy)]:
        assert isinstance(s, StageProtocol), type(s).__name__
        assert isinstance(s, Stage)


def test_a_call_passes_its_plan_to_every_stage_unchanged():
    seen = []

    class Looks(Stage):
        async def admit(self, call, tell):
            seen.append(("admit", call.plan))
            tell("queued", "waiting")
            return "mine"

        def place(self, call, decided):
            seen.append(("place", call.plan, decided))

    planner = types.SimpleNamespace(plan_tool=lambda agent, argv, c, m: ToolPlan("normal", 50, {}))
    ctl = types.SimpleNamespace(hooks=[Looks()], planner_of=lambda agent: planner)
    from agentd.pipeline import Pipeline
    told = []
    pipe = Pipeline(ctl)
    ticket = asyncio.run(pipe.admit(object(), ["make"], tell=lambda k, m: told.append((k, m))))
    pipe.place(Call(object(), ("make",), ticket.plan, key="ag/0001-normal"), ticket)
    assert seen[0][1] is ticket.plan and seen[1] == ("place", ticket.plan, "mine")
    assert told == [("queued", "waiting")]


def test_a_call_waits_once_for_every_resource_it_needs():
    """Two stages without room: one notice names both, and the call starts only when
    both have room; each stage is granted what its pick handed over."""
    from agentd.admission_queue import Wait
    from agentd.pipeline import Pipeline

    class Scarce(Stage):
        def __init__(self, resource):
            self.resource, self.room, self.granted = resource, False, []

        async def admit(self, call, tell):
            return Wait(self.resource, f"no {self.resource} now", "room appears", 5.0, "req")

        def pick(self, requests):
            return [(r, "slot") for r in requests] if self.room else []

        def grant(self, call, request, info, waited):
            self.granted.append((request, info))
            return self.resource

    mem, gpu = Scarce("memory"), Scarce("a GPU")
    planner = types.SimpleNamespace(plan_tool=lambda agent, argv, c, m: ToolPlan("normal", 50, {}))
    ctl = types.SimpleNamespace(hooks=[mem, gpu], planner_of=lambda agent: planner)
    pipe = Pipeline(ctl)
    told = []

    async def main():
        task = asyncio.create_task(pipe.admit(object(), ["make", "all"], tell=lambda k, m: told.append((k, m))))
        await asyncio.sleep(0.01)
        assert pipe.queue.waiting(mem) == pipe.queue.waiting(gpu) == 1
        mem.room = True
        pipe.wake()                           # memory has room, the GPU not yet: it waits on
        await asyncio.sleep(0.01)
        assert not task.done() and mem.granted == []
        gpu.room = True
        pipe.wake()
        return await task
    ticket = asyncio.run(main())
    assert dict(ticket.decided) == {mem: "memory", gpu: "a GPU"}
    assert mem.granted == gpu.granted == [("req", "slot")]
    assert pipe.queue.waiting(mem) == 0
    assert len(told) == 1 and told[0][0] == "queued"
    assert told[0][1].startswith("[agentd] make is waiting for memory and a GPU: no memory now; no a GPU now")


def test_a_tool_call_is_a_frozen_snapshot_and_its_changes_live_in_its_run(tmp_path):
    app = App(tmp_path)
    agent = app.ctl.create_agent("ag", None)
    tool = app.ctl.start_tool(agent, None, ["make"])
    for field in ("plan", "frozen", "done", "actions", "limits_applied", "forecast", "placement", "pid"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(tool, field, None)
    app.ctl.actuator.act(tool, "freeze", "test")          # the actuator owns frozen and the actions
    assert tool.frozen and tool.run.frozen and tool.actions[-1]["action"] == "freeze"
    again = dataclasses.replace(tool, intent="x")          # a new snapshot keeps the call's record
    assert again.run is tool.run and again.frozen
    app.ctl.finish_tool(tool)
    assert tool.done


def test_a_fresh_cgroup_gets_no_write_of_a_value_the_kernel_already_holds(tmp_path):
    """memory.min 0 and cpu.weight 100 are what a new cgroup holds: they are reported as the
    call's limits but written only where no other file of their controller told whether
    the kernel offers it here (a cgroup without the cpu controller gets no cpu.weight)."""
    from agentd.enforce.actuator import Actuator
    from agentd.kernel.fakes import FakeCgroupFS
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    fs.mkdir("t")
    os.unlink(fs.path("t", cgf.CPU_MAX))           # no cpu controller here
    os.unlink(fs.path("t", cgf.CPU_WEIGHT))
    act = Actuator(fs, types.SimpleNamespace(emit=lambda *a, **k: None))
    applied = act.set_limits("tool t", "t", {cgf.MEMORY_MIN: "0", cgf.MEMORY_MAX: str(GiB), cgf.CPU_WEIGHT: "100",
                                             cgf.PIDS_MAX: "max"}, "class", fresh=True)
    assert applied == {cgf.MEMORY_MIN: "0", cgf.MEMORY_MAX: str(GiB), cgf.PIDS_MAX: "max"}
    assert list(applied) == [cgf.MEMORY_MIN, cgf.MEMORY_MAX, cgf.PIDS_MAX]          # the policy's order
    # memory.max told that memory is offered; pids.max (only defaults) and cpu.weight were tried
    assert [(n, v) for _, n, v in fs.writes] == [(cgf.MEMORY_MAX, str(GiB)), (cgf.PIDS_MAX, "max")]
