"""The reclaim stage: an idle agent's own cgroup gives back memory in steps (memory.reclaim)
while its memory pressure stays low; an agent with a tool call running, and the tool
calls' cgroups, are never reclaimed; a dry run writes nothing."""

import types

import pytest

from agentd.errors import FeatureMissing
from agentd.kernel import cgroupfs as cgf
from agentd.policy.loader import load_policy_text
from agentd.reclaim import ReclaimStage, build
from agentd.reclaim.pacer import AgentPace, step_bytes
from tests.unit.stage_world import controller, load

MiB = 1 << 20
GiB = 1 << 30

POLICY = """\
version: 1
defaults: {agent_class: normal, tool_class: normal}
agent_classes:
  normal: {priority: 50}
tool_classes:
  normal: {priority: 50}
reclaim: {idle_s: 1, interval_s: 1, step_percent: 25, max_step: 8Mi, floor: 4Mi, pressure_max_percent: 1,
          backoff_s: 10}
"""


def world(tmp_path, dry_run=False, text=POLICY):
    policy = load(text)
    ctl = controller(tmp_path, policy, dry_run=dry_run)
    fs = ctl.fs
    app = types.SimpleNamespace(fs=fs, ctl=ctl, policy=policy)
    stage = build(app)
    stage.swap_free_fn = lambda: GiB
    ctl.hooks = [stage]
    return ctl, fs, stage


def hold(fs, cg, nbytes):
    with open(fs.path(cg, cgf.MEMORY_CURRENT), "w") as f:
        f.write(str(nbytes))


def stall(fs, cg, total_us):
    with open(fs.path(cg, cgf.MEMORY_PRESSURE), "w") as f:
        f.write(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def reclaims(fs):
    return [(c, int(v)) for c, n, v in fs.writes if n == cgf.MEMORY_RECLAIM and v]


def test_an_idle_agent_is_reclaimed_in_steps_and_a_running_call_stops_it(tmp_path):
    ctl, fs, stage = world(tmp_path)
    agent = ctl.create_agent("ag")
    hold(fs, agent.main_cgroup, 100 * MiB)
    stage.tick(0.0)                   # idle from now
    stage.tick(0.5)
    assert reclaims(fs) == []         # not idle long enough
    stage.tick(1.0)
    assert reclaims(fs) == [(agent.main_cgroup, 8 * MiB)]    # 25% of 100 MiB, capped at max_step
    stage.tick(1.5)                   # within the interval
    assert len(reclaims(fs)) == 1
    stage.tick(2.0)
    assert len(reclaims(fs)) == 2
    assert fs.read_int(agent.main_cgroup, cgf.MEMORY_CURRENT) == 84 * MiB
    assert stage.metric_stats() == {"reclaimed_bytes": 16 * MiB, "reclaim_steps": 2}
    tool = ctl.start_tool(agent, None, ["make"])
    hold(fs, tool.cgroup, 50 * MiB)
    for t in (3.0, 4.0, 5.0):
        stage.tick(t)
    assert len(reclaims(fs)) == 2     # the agent reads its call's result: left alone
    assert all(c == agent.main_cgroup for c, _ in reclaims(fs))   # never a tool call's cgroup
    ctl.finish_tool(tool, {"exit": 0})
    stage.tick(5.5)
    stage.tick(6.0)
    assert len(reclaims(fs)) == 2     # idle again only after idle_s
    stage.tick(6.6)
    assert len(reclaims(fs)) == 3


def test_pressure_backs_off_and_a_small_agent_is_left_alone(tmp_path):
    ctl, fs, stage = world(tmp_path)
    agent = ctl.create_agent("ag")
    hold(fs, agent.main_cgroup, 20 * MiB)
    stage.tick(0.0)
    stage.tick(1.0)
    assert reclaims(fs) == [(agent.main_cgroup, 5 * MiB)]
    stall(fs, agent.main_cgroup, 50_000)        # 5% of the last second stalled: it faults back
    stage.tick(2.0)
    stage.tick(3.0)
    assert len(reclaims(fs)) == 1
    for t in range(4, 12):
        stage.tick(float(t))
    assert len(reclaims(fs)) == 1               # backed off for backoff_s
    stage.tick(12.5)
    assert len(reclaims(fs)) == 2
    hold(fs, agent.main_cgroup, 3 * MiB)        # under the floor
    for t in (14.0, 15.0, 16.0):
        stage.tick(t)
    assert len(reclaims(fs)) == 2


def test_the_kernels_eagain_backs_the_stage_off(tmp_path):
    ctl, fs, stage = world(tmp_path, text=POLICY.replace("max_step: 8Mi", "max_step: 64Mi"))
    agent = ctl.create_agent("ag")
    assert fs.reclaim(agent.main_cgroup, MiB) is False       # more than it holds: the kernel's EAGAIN
    hold(fs, agent.main_cgroup, 10 * MiB)
    stage.tick(0.0)
    stage.tick(1.0)
    assert fs.reclaim(agent.main_cgroup, 0) is True
    n = len(reclaims(fs))
    fs.reclaim = lambda cg, nbytes: False       # the kernel finds nothing more it may take
    stage.tick(2.0)
    assert stage.paces[agent.agent_id].hold_until == 12.0
    for t in (3.0, 4.0, 11.0):
        stage.tick(t)
    assert len(reclaims(fs)) == n and stage.metric_stats()["reclaim_steps"] == 2


def test_a_dry_run_writes_nothing(tmp_path):
    ctl, fs, stage = world(tmp_path, dry_run=True)
    agent = ctl.create_agent("ag")
    hold(fs, agent.main_cgroup, 100 * MiB)
    for t in (0.0, 1.0, 2.0):
        stage.tick(t)
    assert reclaims(fs) == []
    assert stage.metric_stats()["reclaimed_bytes"] == 0
    assert stage.modes() == {"reclaim": "dry-run"}


def test_the_stage_needs_memory_reclaim_and_the_policy(tmp_path):
    ctl, fs, _ = world(tmp_path)
    app = types.SimpleNamespace(fs=fs, ctl=ctl, policy=load_policy_text(POLICY, "t.yaml", host_memory_bytes=GiB))
    import os
    os.unlink(fs.path(ctl.agents_cgroup, cgf.MEMORY_RECLAIM))
    with pytest.raises(FeatureMissing, match="memory.reclaim"):
        build(app)
    off = types.SimpleNamespace(fs=fs, ctl=ctl, policy=load_policy_text(
        POLICY.replace("reclaim: {", "reclaim: {enabled: false, "), "t.yaml", host_memory_bytes=GiB))
    with pytest.raises(FeatureMissing, match="reclaim.enabled"):
        build(off)


def test_pacer_steps_are_a_share_of_what_the_agent_holds():
    cfg = types.SimpleNamespace(idle_s=0.0, interval_s=1.0, step_percent=10.0, max_step=None, floor=0,
                                pressure_max_percent=1.0, backoff_s=5.0)
    pace = AgentPace(idle_since=0.0)
    assert step_bytes(cfg, 0.0, pace, 100 * MiB, 0) == 10 * MiB
    assert step_bytes(cfg, 0.5, pace, 90 * MiB, 0) == 0
    assert step_bytes(cfg, 1.0, pace, 90 * MiB, 5_000) == 9 * MiB     # 0.5% stalled: under 1%
    assert step_bytes(cfg, 2.0, pace, 81 * MiB, 25_000) == 0          # 2%: back off
    assert pace.hold_until == 7.0


def test_idle_agents_memory_above_the_floor_is_reclaimable_up_to_the_free_swap(tmp_path):
    ctl, fs, stage = world(tmp_path)
    a, b = ctl.create_agent("a"), ctl.create_agent("b")
    hold(fs, a.main_cgroup, 100 * MiB)
    hold(fs, b.main_cgroup, 50 * MiB)
    tool = ctl.start_tool(b, None, ["make"])
    stage.tick(0.0)
    assert stage.reclaimable() == 96 * MiB      # a's 100 less the 4 MiB floor; b runs a call
    stage.swap_free_fn = lambda: 10 * MiB
    stage.tick(0.2)
    assert stage.reclaimable() == 10 * MiB      # no more than swap can take
    stage.swap_free_fn = lambda: GiB
    ctl.finish_tool(tool, {"exit": 0})
    stage.tick(0.4)
    assert stage.reclaimable() == 96 * MiB + 46 * MiB


def test_admission_counts_idle_agents_reclaimable_memory_as_room(tmp_path):
    from tests.unit.test_enforce_wiring import make
    e, _ = make()
    e.available_fn = lambda: 100 * MiB
    room = {"bytes": 50 * MiB}
    e.count_reclaimable(lambda: room["bytes"])
    assert e.available_fn() == 150 * MiB
    room["bytes"] = 0
    assert e.available_fn() == 100 * MiB
    e.available_fn = lambda: None           # free memory unknown stays unknown
    e.count_reclaimable(lambda: 50 * MiB)
    assert e.available_fn() is None


def counting_reads(fs, monkeypatch):
    """The reclaim stage's reads of each cgroup's memory.current and memory.pressure."""
    from agentd.reclaim import stage as mod
    seen = []
    real_read, real_total = fs.read, mod.psi.total_us

    def read(cg, name):
        seen.append((cg, name))
        return real_read(cg, name)

    def total_us(path):
        seen.append((path.rsplit("/", 1)[0][len(fs.mount):].strip("/"), cgf.MEMORY_PRESSURE))
        return real_total(path)
    monkeypatch.setattr(fs, "read", read)
    monkeypatch.setattr(mod.psi, "total_us", total_us)
    return seen


def test_a_backed_off_agent_is_not_read_until_its_hold_nears_its_end(tmp_path, monkeypatch):
    ctl, fs, stage = world(tmp_path, text=POLICY.replace("max_step: 8Mi", "max_step: 64Mi"))
    agent = ctl.create_agent("ag")
    hold(fs, agent.main_cgroup, 10 * MiB)
    stage.tick(0.0)
    stage.tick(1.0)
    fs.reclaim = lambda cg, nbytes: False       # the kernel finds nothing more it may take
    stage.tick(2.0)
    assert stage.paces[agent.agent_id].hold_until == 12.0
    seen = counting_reads(fs, monkeypatch)
    for t in range(3, 11):
        stage.tick(float(t))
    assert seen == []                           # held off: nothing read
    assert stage.idle[agent.agent_id] == 0 and stage.reclaimable() == 0
    stage.tick(11.0)                            # one interval before the end: the base reading
    assert (agent.main_cgroup, cgf.MEMORY_PRESSURE) in seen
    del fs.reclaim                              # the fake kernel's own reclaim again
    n = len(reclaims(fs))
    stage.tick(12.0)
    assert len(reclaims(fs)) == n + 1           # the hold is over: it goes on


def test_free_swap_is_read_only_while_an_idle_agent_holds_memory(tmp_path):
    ctl, fs, stage = world(tmp_path)
    asked = []
    stage.swap_free_fn = lambda: asked.append(1) or GiB
    stage.tick(0.0)
    assert asked == []                          # no agent at all
    agent = ctl.create_agent("ag")
    hold(fs, agent.main_cgroup, 100 * MiB)
    tool = ctl.start_tool(agent, None, ["make"])
    stage.tick(1.0)
    assert asked == [] and stage.reclaimable() == 0     # its call runs: nothing to take
    ctl.finish_tool(tool, {"exit": 0})
    stage.tick(2.0)
    assert asked == [1]
    assert stage.reclaimable() == 96 * MiB      # above the floor, within the free swap
