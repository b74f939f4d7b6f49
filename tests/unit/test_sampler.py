"""One memory reading per running tool call per tick, shared by every stage that reads it."""

import types

from agentd.enforce.enforcer import Enforcer
from agentd.kernel import cgroupfs as cgf
from agentd.metrics.samples import SampleLog
from agentd.monitor.sampler import Sampler
from tests.unit.test_metrics import App

GiB = 1 << 30


def test_one_reading_per_call_per_tick_feeds_the_enforcer_and_the_sample_log(tmp_path):
    app = App(tmp_path)
    enforcer = Enforcer(app, available_fn=lambda: 8 * GiB)
    samples = SampleLog(app, interval_s=1.0)
    app.hooks += [enforcer, samples]
    app.ctl.hooks = app.hooks
    seen = []
    app.events.subscribe(seen.append)
    agent = app.ctl.create_agent("ag", None)
    calls = [app.ctl.start_tool(agent, None, ["pytest"]), app.ctl.start_tool(agent, None, ["make"])]
    fs = app.ctl.fs
    for i, t in enumerate(calls):
        fs.write(t.cgroup, cgf.MEMORY_CURRENT, str((i + 1) * 100 << 20))
    fs.write(agent.cgroup, cgf.MEMORY_CURRENT, str(400 << 20))
    reads, looks = [], []
    real, real_has = fs.read_if_offered, fs.has

    def counting(cg, name):
        if name == cgf.MEMORY_CURRENT:
            reads.append(cg)
        return real(cg, name)

    def has(cg, name):
        looks.append((cg, name))
        return real_has(cg, name)
    fs.read_if_offered, fs.has = counting, has
    clock = iter([100.0, 100.5, 101.0])
    sampler = Sampler(app.ctl, monotonic=lambda: next(clock), wall=lambda: 1700000000.0)
    for _ in range(3):
        snap = sampler.sample()
        for h in app.hooks:
            h.on_sample(snap)
    # once per call and once per agent per tick, and no lookup of the file before
    assert sorted(reads) == sorted([t.cgroup for t in calls] * 3 + [agent.cgroup] * 3)
    assert (agent.cgroup, cgf.MEMORY_CURRENT) not in looks
    assert dict(snap.memory) == {calls[0].key: 100 << 20, calls[1].key: 200 << 20}
    assert dict(snap.agents) == {agent.agent_id: 400 << 20}
    assert enforcer.tools[calls[1].key].current == 200 << 20             # the enforcer saw the reading
    assert calls[1].peak_sample == 200 << 20                             # and the call's recorded peak
    # The sample log keeps its own pace (1 s): the ticks at 100.0 and 101.0, not 100.5.
    points = [e for e in seen if e["event"] == "sample" and e["tool"] == calls[0].tool_id]
    assert [p["memory_bytes"] for p in points] == [0, 100 << 20]         # the start point, then one
    assert samples._ticked == 101.0


def test_status_and_metrics_read_the_latest_tick_not_the_files(tmp_path):
    from agentd.api.status import snapshot
    from agentd.metrics.collector import AgentdCollector
    app = App(tmp_path)
    app.cfg, app.socket_path = types.SimpleNamespace(standalone=False), "s"
    agent = app.ctl.create_agent("ag", None)
    t = app.ctl.start_tool(agent, None, ["pytest"])
    fs = app.ctl.fs
    fs.write(t.cgroup, cgf.MEMORY_CURRENT, str(100 << 20))
    fs.write(agent.cgroup, cgf.MEMORY_CURRENT, str(300 << 20))
    app.sampler.sample()
    fs.write(t.cgroup, cgf.MEMORY_CURRENT, str(999 << 20))        # after the tick: not read again
    fs.write(agent.cgroup, cgf.MEMORY_CURRENT, str(999 << 20))
    [a] = snapshot(app)["agents"]
    assert a["memory_bytes"] == 300 << 20 and a["tools"][0]["memory_bytes"] == 100 << 20
    got = [s.value for f in AgentdCollector(app).collect() for s in f.samples
           if s.name == "agentd_agent_memory_bytes"]
    assert got == [300 << 20]
    late = app.ctl.start_tool(agent, None, ["make"])                # newer than the tick: read now
    fs.write(late.cgroup, cgf.MEMORY_CURRENT, str(7 << 20))
    assert snapshot(app)["agents"][0]["tools"][1]["memory_bytes"] == 7 << 20


def test_io_is_read_only_while_the_policy_makes_it_a_ladder_reason(tmp_path):
    from agentd.kernel import blkio
    from agentd.policy.loader import load_policy_text
    from agentd.policy.planner import Planner
    app = App(tmp_path)
    agent = app.ctl.create_agent("ag", None)
    t = app.ctl.start_tool(agent, None, ["make"])
    fs = app.ctl.fs
    fs.write(t.cgroup, blkio.IO_STAT, "7:0 rbytes=100 wbytes=4000 rios=1 wios=3 dbytes=0 dios=0\n"
                                      "8:0 rbytes=0 wbytes=1000 rios=0 wios=1 dbytes=0 dios=0\n")
    fs.write(agent.cgroup, cgf.IO_PRESSURE, "some avg10=1.00 avg60=0.00 avg300=0.00 total=250000\n"
                                            "full avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n")
    sampler = Sampler(app.ctl, monotonic=lambda: 1.0, wall=lambda: 2.0)
    snap = sampler.sample()
    assert dict(snap.io) == {} and dict(snap.io_stall) == {}
    app.ctl.planner = Planner(load_policy_text("version: 1\nio: {ladder_stall_us: 100000}\n", "t.yaml",
                                               host_memory_bytes=16 * GiB), 16 * GiB)
    snap = sampler.sample()
    assert dict(snap.io) == {t.key: (5100, 5)}
    assert dict(snap.io_stall) == {"ag": 250000}
