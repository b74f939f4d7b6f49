"""I/O pressure as a ladder reason: the pure blame over literals, the ladder's order under
it, and the enforcer that turns the sampler's io readings into a step on the culprit."""

import types

from agentd.enforce.iopressure import MIN_BYTES_PER_S, AgentStall, CallIo, Window, blame
from agentd.enforce.ladder import FREEZE, THROTTLE, Candidate, Ladder
from agentd.kernel import cgroupfs as cgf
from agentd.model import Agent
from agentd.monitor.sampler import Snapshot
from agentd.pipeline import Pipeline
from agentd.policy.loader import load_policy_text

from .test_enforce_wiring import FS, add

from agentd.enforce.enforcer import Enforcer

GiB, MiB = 1 << 30, 1 << 20


def stall(agent, priority, ms):
    return AgentStall(agent, priority, ms * 1000, 2.0)


def call(key, agent_priority, priority, mib_s, ios=0.0):
    return CallIo(key, key.split("/")[0], agent_priority, priority, mib_s * MiB, ios)


def test_a_lower_priority_calls_traffic_that_stalls_a_higher_agent_is_named_with_both():
    calls = [call("lo/0001-build", 100, 20, 45.0, 180), call("mid/0002-test", 400, 50, 30.0)]
    b = blame([stall("hi", 800, 320), stall("lo", 100, 900)], calls, 200_000)
    assert (b.victim, b.culprit, b.culprit_agent) == ("hi", "lo/0001-build", "lo")
    assert b.reason == ("I/O pressure: agent hi (priority 800) waited 320 ms for I/O in 2 s while lo/0001-build "
                        "(agent priority 100) moved 45.0 MiB/s, 180 I/O/s")


def test_no_blame_below_the_threshold_for_equals_or_for_calls_that_move_next_to_nothing():
    busy = [call("lo/0001-build", 100, 20, 45.0)]
    assert blame([stall("hi", 800, 150)], busy, 200_000) is None               # a short wait
    assert blame([stall("hi", 100, 900)], busy, 200_000) is None               # not higher than the culprit
    quiet = [call("lo/0001-cat", 100, 20, MIN_BYTES_PER_S / MiB / 2, 10)]
    assert blame([stall("hi", 800, 900)], quiet, 200_000) is None              # the disk's own slowness
    # An agent's own calls never stall it on its behalf.
    assert blame([stall("hi", 800, 900)], [call("hi/0001-build", 800, 20, 80.0)], 200_000) is None
    # Many small operations are traffic too.
    assert blame([stall("hi", 800, 900)], [call("lo/0001-find", 100, 20, 0.1, 400)], 200_000).culprit == \
        "lo/0001-find"


def test_the_highest_priority_victim_and_the_lowest_priority_busy_culprit():
    calls = [call("lo/0001-a", 100, 50, 10.0), call("lo/0002-b", 100, 20, 5.0), call("lo/0003-c", 100, 20, 60.0),
             call("mid/0004-d", 400, 10, 99.0)]
    b = blame([stall("mid", 400, 500), stall("hi", 800, 300)], calls, 200_000)
    assert b.victim == "hi" and b.culprit == "lo/0003-c"


def test_window_growth_over_the_last_span():
    w = Window(2.0)
    assert w.add("a", 0.0, 100) is None
    assert w.add("a", 1.0, 300) == (200, 1.0)
    assert w.add("a", 2.0, 500) == (400, 2.0)
    assert w.add("a", 3.0, 600) == (300, 2.0)          # the sample at 0 has left the span
    assert w.add("a", 4.0, 10) is None                 # a counter that went back: a new cgroup
    w.keep(set())
    assert w.samples == {}


def test_under_io_pressure_the_ladder_takes_the_busiest_call_first():
    lad = Ladder(steps=(THROTTLE, FREEZE), step_interval_s=1.0)
    cands = [Candidate("lo/0001-big", 20, 100, memory=4 * GiB), Candidate("lo/0002-writer", 20, 100, memory=MiB,
                                                                          io_rate=40 * MiB),
             Candidate("lo/0003-quiet", 10, 100, memory=MiB)]
    lad.pressure(10.0, "I/O pressure: test", io=True)
    d = lad.decide(10.0, cands)
    assert (d.key, d.action, d.reason) == ("lo/0002-writer", THROTTLE, "I/O pressure: test")
    # The same candidates under memory pressure: the lowest priority, then the bigger, first.
    lad2 = Ladder(steps=(THROTTLE, FREEZE), step_interval_s=1.0)
    lad2.pressure(10.0, "memory pressure")
    assert lad2.decide(10.0, cands).key == "lo/0003-quiet"


POLICY = """\
version: 1
agent_classes:
  normal: {}
  high: {priority: 800}
  low: {priority: 100}
pressure: {steps: [freeze], step_interval_s: 1.0, relief_interval_s: 2.0}
io: {ladder_stall_us: 200000}
"""


def make(policy=POLICY):
    p = load_policy_text(policy, host_memory_bytes=8 * GiB)
    ctl = types.SimpleNamespace(agents={}, agents_cgroup="r/agents", sample_tool=lambda t: 10 * MiB, hooks=[])
    ctl.pipeline = Pipeline(ctl)          # its admission queue: the enforcer wakes it
    events = types.SimpleNamespace(got=[], emit=lambda kind, **f: events.got.append((kind, f)))
    app = types.SimpleNamespace(fs=FS(), ctl=ctl, events=events, policy=p, state_dir="", host_memory=8 * GiB,
                                root="r")
    return Enforcer(app, available_fn=lambda: 4 * GiB), app


def agent(app, name, priority):
    app.ctl.agents[name] = Agent(agent_id=name, cgroup=f"r/agents/{name}", agent_class=name, priority=priority)


def snap(t, io, stall):
    return Snapshot(t, t, types.MappingProxyType({}), io=types.MappingProxyType(io),
                    io_stall=types.MappingProxyType(stall))


def test_the_enforcer_freezes_the_low_writer_that_stalls_the_high_agent_and_thaws_it_after(tmp_path):
    e, app = make()
    agent(app, "hi", 800)
    agent(app, "lo", 100)
    git = add(app, e, "hi", "0001-normal", 80)
    build = add(app, e, "lo", "0002-normal", 20)
    other = add(app, e, "lo", "0003-normal", 10)          # lower priority, but quiet on disk
    t, moved, waited = 100.0, 0, 0
    for _ in range(4):
        e.on_sample(snap(t, {git.key: (moved // 100, 10), build.key: (moved, moved // MiB),
                             other.key: (0, 0)}, {"hi": waited, "lo": 0}))
        t += 0.5
        moved += 20 * MiB                                  # 40 MiB/s
        waited += 150_000                                  # 300 ms of every second
    freezes = [w[0] for w in app.fs.writes if w[1] == cgf.FREEZE and w[2] == "1"]
    assert freezes == [build.cgroup]
    assert build.actions[0]["reason"].startswith("I/O pressure: agent hi (priority 800) waited ")
    assert "while lo/0002-normal (agent priority 100) moved 40.0 MiB/s" in build.actions[0]["reason"]
    assert e.counters["io_pressure_total"] >= 1
    # The stall ends: after the relief interval the writer is thawed.
    for _ in range(12):
        e.on_sample(snap(t, {git.key: (0, 0), build.key: (moved, 0), other.key: (0, 0)}, {"hi": waited, "lo": 0}))
        t += 0.5
    assert [w[0] for w in app.fs.writes if w[1] == cgf.FREEZE and w[2] == "0"] == [build.cgroup]


def test_without_ladder_stall_us_io_is_no_ladder_reason():
    e, app = make(POLICY.replace("io: {ladder_stall_us: 200000}\n", ""))
    agent(app, "hi", 800)
    agent(app, "lo", 100)
    build = add(app, e, "lo", "0001-normal", 20)
    t = 100.0
    for i in range(6):
        e.on_sample(snap(t, {build.key: (i * 20 * MiB, i * 20)}, {"hi": i * 150_000}))
        t += 0.5
    assert not [w for w in app.fs.writes if w[1] == cgf.FREEZE]
