"""The enforcer's wiring over a recording cgroup double: memory.high from the forecast at
plan time, ladder actions on the right cgroups in priority order, the main cgroup only
with kill_main_allowed, relief on pressure's end."""

import asyncio
import dataclasses
import time
import types

from agentd.enforce.enforcer import Enforcer
from agentd.kernel import cgroupfs as cgf
from agentd.model import Agent, ToolCall, ToolPlan
from agentd.pipeline import Call, Pipeline, merge
from agentd.policy.loader import load_policy_text

GiB, MiB = 1 << 30, 1 << 20

POLICY = """\
version: 1
agent_classes:
  normal: {{kill_main_allowed: {kill_main}}}
pressure: {{steps: {steps}, step_interval_s: 1.0, relief_interval_s: 2.0}}
forecast: {{headroom: 2.0, min_high: 64Mi}}
"""


class FS:
    """Cgroup files in a dict; records writes. Tool cgroups offer freeze, not memory."""

    def __init__(self):
        self.files, self.writes, self.looks = {}, [], []

    def path(self, cg, name=None):
        return f"/fake/{cg}/{name}" if name else f"/fake/{cg}"

    def has(self, cg, name):
        self.looks.append(("has", cg, name))
        return name == cgf.FREEZE or (cg, name) in self.files

    def read(self, cg, name):
        self.looks.append(("read", cg, name))
        return self.files.get((cg, name), "0\n")

    def read_if_offered(self, cg, name):
        self.looks.append(("read", cg, name))
        return self.files.get((cg, name))

    def read_int(self, cg, name):
        v = self.read(cg, name).strip()
        return None if v == "max" else int(v)

    def read_flat_keyed(self, cg, name):
        return {k: int(v) for k, v in (line.split() for line in self.read(cg, name).splitlines() if line.strip())}

    def write(self, cg, name, value):
        self.writes.append((cg, name, str(value)))
        self.files[(cg, name)] = str(value)

    def freeze(self, cg, frozen=True):
        self.write(cg, cgf.FREEZE, "1" if frozen else "0")

    def kill(self, cg):
        self.write(cg, cgf.KILL, "1")

    def enable_controllers(self, cg):
        return set()

    def reclaim(self, cg, nbytes):
        """memory.reclaim as the kernel does it: a cgroup's anonymous memory goes to swap
        only as far as its memory.swap.max lets it."""
        cur = self.read_int(cg, cgf.MEMORY_CURRENT) or 0
        may = cur if self.files.get((cg, cgf.MEMORY_SWAP_MAX)) == "max" else 0
        moved = min(cur, int(nbytes), may)
        self.writes.append((cg, cgf.MEMORY_RECLAIM, str(int(nbytes))))
        self.files[(cg, cgf.MEMORY_CURRENT)] = str(cur - moved)
        self.files[(cg, "memory.swap.current")] = str(self.read_int(cg, "memory.swap.current") + moved)
        return moved == int(nbytes)


def with_swap(app, *tools, held=96 * MiB):
    """The calls' cgroups as the swap stage leaves them on a host with swap: memory.swap.max
    and memory.zswap.max 0, `held` bytes in memory."""
    for t in tools:
        app.fs.files.update({(t.cgroup, cgf.MEMORY_SWAP_MAX): "0", (t.cgroup, "memory.zswap.max"): "0",
                             (t.cgroup, cgf.MEMORY_CURRENT): str(held), (t.cgroup, "memory.swap.current"): "0"})


def make(kill_main="false", steps="[freeze, kill]", swap_free=0):
    policy = load_policy_text(POLICY.format(kill_main=kill_main, steps=steps), host_memory_bytes=8 * GiB)
    fs = FS()
    ctl = types.SimpleNamespace(agents={}, agents_cgroup="r/agents", sample_tool=lambda t: 10 * MiB, hooks=[])
    ctl.pipeline = Pipeline(ctl)          # its admission queue: the enforcer wakes it
    events = types.SimpleNamespace(got=[], emit=lambda kind, **f: events.got.append((kind, f)))
    app = types.SimpleNamespace(fs=fs, ctl=ctl, events=events, policy=policy, state_dir="", host_memory=8 * GiB,
                                root="r")
    e = Enforcer(app, available_fn=lambda: 4 * GiB, swap_free_fn=lambda: swap_free)
    return e, app


def add(app, e, agent_id, tool_id, priority, limits=None):
    agent = app.ctl.agents.get(agent_id)
    if agent is None:
        agent = app.ctl.agents[agent_id] = Agent(agent_id=agent_id, cgroup=f"r/agents/{agent_id}",
                                                 agent_class="normal", priority=50)
    plan = ToolPlan(tool_class="normal", priority=priority, limits=dict(limits or {}))
    cg = f"r/agents/{agent_id}/tools/{tool_id}"
    placement = merge(plan, [e.place(Call(agent, ("make",), plan, key=f"{agent_id}/{tool_id}", cgroup=cg), None)])
    t = ToolCall(agent_id=agent_id, tool_id=tool_id, cgroup=cg, argv=["make"], plan=plan, placement=placement,
                 forecast=placement.forecast)
    agent.tools[tool_id] = t
    return t


def replant(app, t, **changes):
    """`t` with `changes` to its snapshot (a ToolCall is frozen; its ToolRun is kept)."""
    t = app.ctl.agents[t.agent_id].tools[t.tool_id] = dataclasses.replace(t, **changes)
    return t


def test_plan_sets_memory_high_from_the_forecast_capped_by_memory_max():
    e, app = make()
    t = add(app, e, "a", "0001-normal", 50, {cgf.MEMORY_MAX: str(512 * MiB), cgf.MEMORY_HIGH: "max"})
    # Cold start: the class prior (1 GiB) capped by memory.max (512 MiB) is the forecast.
    assert t.forecast.peak_bytes == 512 * MiB
    assert t.placement.limits[cgf.MEMORY_HIGH] == str(512 * MiB)
    u = add(app, e, "a", "0002-normal", 50, {cgf.MEMORY_MAX: "max"})
    # 1 GiB x headroom 2 is below the host's 8 GiB: a number, not "max".
    assert u.placement.limits[cgf.MEMORY_HIGH] == str(2 * GiB)


def test_ladder_freezes_then_kills_lowest_priority_and_never_the_main_cgroup():
    e, app = make()
    low = add(app, e, "a", "0001-batch", 20)
    high = add(app, e, "a", "0002-interactive", 80)
    t = 100.0
    for _ in range(8):
        e._on_pressure("", t, "test")
        e.tick(t)
        t += 1.0
    kills = [w for w in app.fs.writes if w[1] == cgf.KILL]
    freezes = [w[0] for w in app.fs.writes if w[1] == cgf.FREEZE and w[2] == "1"]
    assert freezes[:2] == [low.cgroup, high.cgroup]
    assert [k[0] for k in kills] == [low.cgroup, high.cgroup]
    assert not any("main" in w[0] for w in app.fs.writes)
    assert [a["action"] for a in low.actions] == ["freeze", "kill"]


def test_kill_main_only_when_the_class_allows_it_and_after_the_tools():
    e, app = make(kill_main="true")
    low = add(app, e, "a", "0001-batch", 20)
    t = 100.0
    for _ in range(5):
        e._on_pressure("", t, "test")
        e.tick(t)
        t += 1.0
    kills = [w[0] for w in app.fs.writes if w[1] == cgf.KILL]
    assert kills == [low.cgroup, "r/agents/a/main"]


def test_relief_thaws_highest_priority_first_after_pressure_ends():
    e, app = make(steps="[freeze]", swap_free=GiB)
    low = add(app, e, "a", "0001-batch", 20)
    high = add(app, e, "a", "0002-interactive", 80)
    with_swap(app, low, high)     # each pause frees its memory, so the second one makes room too
    e._on_pressure("", 100.0, "test")
    e._on_pressure("", 101.0, "test")             # the stall goes on: a second event
    assert low.frozen and high.frozen
    thaws = []
    t = 101.5
    while t < 115 and (low.frozen or high.frozen):
        e.tick(t)
        thaws += [w[0] for w in app.fs.writes if w[1] == cgf.FREEZE and w[2] == "0" and w[0] not in thaws]
        t += 0.5
    assert thaws == [high.cgroup, low.cgroup]
    assert [a["action"] for a in high.actions] == ["freeze", "thaw"]


def test_running_call_memory_high_follows_its_growth_within_free_memory():
    e, app = make()
    samples = iter([100 * MiB, 300 * MiB, 500 * MiB, 700 * MiB, 900 * MiB] + [900 * MiB] * 20)
    app.ctl.sample_tool = lambda t: next(samples)
    t = add(app, e, "a", "0001-normal", 50, {cgf.MEMORY_MAX: str(4 * GiB)})
    first = int(t.placement.limits[cgf.MEMORY_HIGH])
    assert first == 2 * GiB                       # prior 1 GiB x headroom 2
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = str(first)
    t.run.limits_applied = dict(t.placement.limits)
    for i in range(5):
        e.tick(100.0 + i * 0.5)
    highs = [int(w[2]) for w in app.fs.writes if w[1] == cgf.MEMORY_HIGH]
    # Growing 400 MiB/s: the re-forecast projects past the start forecast, so the limit
    # rises, but never past memory.max.
    assert highs and highs[-1] > first and max(highs) <= 4 * GiB
    # With the host nearly full the limit only follows what the call holds.
    e.available_fn = lambda: 0
    app.fs.writes.clear()
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = str(first)
    e.tick(103.0)
    assert [int(w[2]) for w in app.fs.writes if w[1] == cgf.MEMORY_HIGH] == [900 * MiB]


def test_each_tick_reads_a_running_calls_memory_high_once():
    # The tick's re-forecast reads the call's memory.high once and hands that value to the
    # write: no lookup of the file and no second read (each a syscall per call per tick).
    e, app = make()
    samples = iter([100 * MiB, 300 * MiB, 500 * MiB, 700 * MiB, 900 * MiB])
    app.ctl.sample_tool = lambda t: next(samples)
    t = add(app, e, "a", "0001-normal", 50, {cgf.MEMORY_MAX: str(4 * GiB)})
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = t.placement.limits[cgf.MEMORY_HIGH]
    t.run.limits_applied = dict(t.placement.limits)
    e.tick(99.5)                                  # the first tick also probes what the cgroup offers
    for i in range(4):
        app.fs.looks.clear()
        e.tick(100.0 + i * 0.5)
        assert [x for x in app.fs.looks if x[2] == cgf.MEMORY_HIGH] == [("read", t.cgroup, cgf.MEMORY_HIGH)]
    highs = [int(w[2]) for w in app.fs.writes if w[1] == cgf.MEMORY_HIGH]
    assert highs and highs[-1] > 2 * GiB        # it still follows the growth
    # Where the kernel offers no memory.high, the tick writes none.
    del app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)]
    app.fs.writes.clear()
    app.ctl.sample_tool = lambda t: 3 * GiB
    e.tick(103.0)
    assert not [w for w in app.fs.writes if w[1] == cgf.MEMORY_HIGH]


def test_a_tick_with_no_running_call_reads_no_free_memory():
    # Free memory (a read of /proc/meminfo and of the limit above agentd) is what the
    # running calls' memory.high follows: a tick with none running reads none.
    e, app = make()
    asked = []
    e.available_fn = lambda: asked.append(1) or 4 * GiB
    e.tick(100.0)
    assert asked == []
    t = add(app, e, "a", "0001-normal", 50, {cgf.MEMORY_MAX: str(4 * GiB)})
    add(app, e, "a", "0002-normal", 50, {cgf.MEMORY_MAX: str(4 * GiB)})
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = t.placement.limits[cgf.MEMORY_HIGH]
    e.tick(100.5)
    assert asked == [1]                         # once per tick, for every running call


def test_a_policys_own_memory_high_stays_the_ceiling_while_the_call_grows():
    e, app = make()
    samples = iter([100 * MiB, 300 * MiB, 500 * MiB, 700 * MiB, 900 * MiB] + [900 * MiB] * 20)
    app.ctl.sample_tool = lambda t: next(samples)
    t = add(app, e, "a", "0001-normal", 50, {cgf.MEMORY_MAX: str(4 * GiB), cgf.MEMORY_HIGH: str(GiB)})
    assert int(t.placement.limits[cgf.MEMORY_HIGH]) == GiB
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = str(GiB)
    t.run.limits_applied = dict(t.placement.limits)
    for i in range(8):
        e.tick(100.0 + i * 0.5)
    assert all(int(w[2]) <= GiB for w in app.fs.writes if w[1] == cgf.MEMORY_HIGH), app.fs.writes


def test_reloaded_policy_changes_the_ladder_steps():
    e, app = make()
    assert e.ladder.steps == ("freeze", "kill")
    app.policy = load_policy_text(POLICY.format(kill_main="false", steps="[kill]"), host_memory_bytes=8 * GiB)
    e.tick(1.0)
    assert e.ladder.steps == ("kill",)


def test_memory_watch_events_move_memory_high_and_escalate_fast_growth():
    """A BPF memory-watch event for a tool call re-forecasts it at once; growth the host
    cannot hold for two seconds is pressure on its agent (the ladder acts, lowest first)."""
    from agentd.monitor.events import MemEvent, MemReason
    e, app = make()
    watched = {}
    e.memwatch = types.SimpleNamespace(set_limit=lambda cg, threshold_bytes, rate_bytes_per_s, path: watched.update(
        {cg: (threshold_bytes, rate_bytes_per_s)}), clear=lambda cg: watched.pop(cg))
    t = add(app, e, "a", "0001-batch", 20, {cgf.MEMORY_MAX: "max"})
    t.run.cgroup_id = 4242
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = t.placement.limits[cgf.MEMORY_HIGH]
    e.on_tool_start(app.ctl.agents["a"], t)
    assert watched[4242][0] == t.forecast.peak_bytes         # threshold = the forecast
    # Slow growth past the forecast: no pressure, no ladder action.
    e._on_mem(MemEvent(cgroup_id=4242, reason=next(iter(MemReason)), rss_bytes=1100 * MiB, threshold_bytes=0,
                       rate_bytes_per_s=0, growth_bytes=10 * MiB, window_ns=250_000_000, pid=1, ts_ns=0))
    assert e.counters["memwatch_events_total"] == 1
    assert not [w for w in app.fs.writes if w[1] in (cgf.FREEZE, cgf.KILL)]
    # 2 GiB in 250 ms with 4 GiB free: pressure now, the batch call is frozen first.
    e._on_mem(MemEvent(cgroup_id=4242, reason=next(iter(MemReason)), rss_bytes=3 * GiB, threshold_bytes=0,
                       rate_bytes_per_s=0, growth_bytes=2 * GiB, window_ns=250_000_000, pid=1, ts_ns=0))
    assert [w[0] for w in app.fs.writes if w[1] == cgf.FREEZE] == [t.cgroup]
    assert "memory watch" in t.actions[-1]["reason"]
    e.on_tool_end(app.ctl.agents["a"], t, {})
    assert 4242 not in watched


def _watched(app, e, memory_watch=True):
    """A batch and an interactive call, both tracked by a recording memory watch."""
    if not memory_watch:
        text = POLICY.format(kill_main="false", steps="[throttle, freeze, kill]")
        app.policy = load_policy_text(text.replace("relief_interval_s: 2.0}", "relief_interval_s: 2.0, "
                                                   "memory_watch: false}"), host_memory_bytes=8 * GiB)
        assert app.policy.pressure.memory_watch is False
    watched = {}
    e.memwatch = types.SimpleNamespace(set_limit=lambda cg, threshold_bytes, rate_bytes_per_s, path: watched.update(
        {cg: (threshold_bytes, rate_bytes_per_s)}), clear=lambda cg: watched.pop(cg))
    calls = []
    for n, (tid, prio) in enumerate((("0001-batch", 20), ("0002-interactive", 80))):
        t = add(app, e, "a", tid, prio, {cgf.MEMORY_MAX: "max"})
        t.run.cgroup_id = 4000 + n
        app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = t.placement.limits[cgf.MEMORY_HIGH]
        e.on_tool_start(app.ctl.agents["a"], t)
        calls.append(t)
    return watched, calls


def _growth(cgid, rss, growth, ts):
    from agentd.monitor.events import MemEvent, MemReason
    return MemEvent(cgroup_id=cgid, reason=MemReason.RATE, rss_bytes=rss, threshold_bytes=0, rate_bytes_per_s=0,
                    growth_bytes=growth, window_ns=250_000_000, pid=1, ts_ns=int(ts * 1e9))


def test_memory_watch_steps_every_watch_interval_lowest_priority_first():
    """Growth that would use up the memory left within the horizon is urgent: the ladder
    climbs at the watch's pace (not step_interval_s), lowest priority first, and stops
    climbing when the reports stop."""
    import time as _time
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 600 * MiB
    watched, (low, high) = _watched(app, e)
    assert set(watched) == {4000, 4001}
    t0 = _time.monotonic() - 10.0            # the kernel's stamps on the events: in the past
    # The interactive call grows 35 MiB per 0.25 s (140 MiB/s): 280 MiB in 2 s, 600 MiB left.
    e._on_mem(_growth(4001, 300 * MiB, 35 * MiB, t0))
    assert not low.actions and not high.actions              # not dangerous yet
    e.available_fn = lambda: 250 * MiB
    for i in range(3):
        e._on_mem(_growth(4001, (335 + 35 * i) * MiB, 35 * MiB, t0 + 0.25 * (i + 1)))
    assert [a["action"] for a in low.actions] == ["throttle", "freeze", "kill"]
    assert not high.actions                                  # the batch call went first
    assert "memory watch" in low.actions[0]["reason"] and "0002-interactive grows" in low.actions[0]["reason"]
    assert e.counters["memwatch_pressure_total"] == 3
    # No more reports: the urgent pressure is over half a second after the last one.
    assert not e.ladder.under_pressure(t0 + 1.3)
    e.tick(t0 + 1.3)
    assert not high.actions


def test_memory_watch_leaves_growth_under_the_agents_own_cap_to_the_kernel():
    """Growth that would reach the agent's own memory.max but not the end of shared memory
    harms only that agent, and the kernel answers it there (its OOM order kills the call,
    only if it really does not fit): the memory watch takes no step. Growth that would use
    up the shared memory is pressure on the whole tree, cap or not."""
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 8 * GiB
    _, (low, high) = _watched(app, e)
    agent_cg = app.ctl.agents["a"].cgroup
    app.fs.files[(agent_cg, cgf.MEMORY_MAX)] = str(512 * MiB)
    app.fs.files[(agent_cg, cgf.MEMORY_CURRENT)] = str(400 * MiB)
    import time as _time
    t0 = _time.monotonic() - 10.0
    e._on_mem(_growth(4001, 200 * MiB, 20 * MiB, t0))         # 160 MiB in 2 s: past the cap's 112 MiB
    assert not low.actions and not high.actions
    assert not e.ladder.under_pressure(t0)
    # 120 MiB shared left: the call can take at most the 112 MiB its agent's cap leaves,
    # so it cannot use up the shared memory either, whatever its pace.
    e.available_fn = lambda: 120 * MiB
    e._on_mem(_growth(4001, 220 * MiB, 20 * MiB, t0 + 0.25))
    assert not low.actions and not high.actions
    e.available_fn = lambda: 100 * MiB                        # less left than the cap allows
    e._on_mem(_growth(4001, 240 * MiB, 20 * MiB, t0 + 0.5))
    assert [a["action"] for a in low.actions] == ["throttle"]
    assert "in the agentd tree" in low.actions[0]["reason"] and "100.0 MiB left" in low.actions[0]["reason"]


def test_memory_watch_projection_stops_at_the_calls_own_memory_max():
    """A call with a memory.max of its own (a class cap) cannot grow past it either: with
    more shared memory left than the room under that cap, fast growth takes no step; the
    page cache it holds counts as room (the kernel reclaims it before it OOM-kills)."""
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 300 * MiB
    _, (low, high) = _watched(app, e)
    app.fs.files[(high.cgroup, cgf.MEMORY_MAX)] = str(512 * MiB)
    app.fs.files[(high.cgroup, cgf.MEMORY_CURRENT)] = str(300 * MiB)
    app.fs.files[(high.cgroup, cgf.MEMORY_STAT)] = "anon 250000000\ninactive_file 0\n"
    t0 = time.monotonic() - 10.0
    e._on_mem(_growth(4001, 300 * MiB, 100 * MiB, t0))       # 800 MiB in 2 s; 212 MiB under its cap
    assert not low.actions and not high.actions
    # 90 MiB of it is page cache: 302 MiB of room, past the 300 MiB shared left.
    app.fs.files[(high.cgroup, cgf.MEMORY_STAT)] = f"anon 1\ninactive_file {90 * MiB}\n"
    e._on_mem(_growth(4001, 400 * MiB, 100 * MiB, t0 + 0.25))
    assert [a["action"] for a in low.actions] == ["throttle"]


def test_memory_watch_projection_stops_at_agentds_own_root_limit():
    """A memory.max on agentd's root bounds every call below it: growth that can reach the
    whole of what is left under it uses up the shared memory."""
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 64 * MiB
    _, (low, high) = _watched(app, e)
    app.fs.files[("r", cgf.MEMORY_MAX)] = str(1 * GiB)
    app.fs.files[("r", cgf.MEMORY_CURRENT)] = str(1 * GiB - 64 * MiB)
    t0 = time.monotonic() - 10.0
    e._on_mem(_growth(4001, 300 * MiB, 100 * MiB, t0))
    assert [a["action"] for a in low.actions] == ["throttle"]
    assert "64.0 MiB left" in low.actions[0]["reason"]


def test_memory_watch_switched_off_by_policy_tracks_nothing_and_never_escalates():
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 100 * MiB
    watched, (low, high) = _watched(app, e, memory_watch=False)
    assert watched == {}
    e.by_cgid[4001] = ("a", high.tool_id)        # an event that was on its way regardless
    import time as _time
    e._on_mem(_growth(4001, 300 * MiB, 100 * MiB, _time.monotonic()))
    assert not low.actions and not high.actions


def test_memory_watch_rate_is_measured_over_a_whole_window_not_a_burst():
    """A rate event leaves as soon as the window's growth passes the alert budget: 8 MiB
    10 ms into a window is not 800 MiB/s. Between two events the rate is measured."""
    import time as _time
    from agentd.monitor.events import MemEvent, MemReason
    e, app = make(steps="[throttle, freeze, kill]")
    e.available_fn = lambda: 600 * MiB
    _, (low, _high) = _watched(app, e)
    t0 = _time.monotonic() - 10.0
    burst = MemEvent(cgroup_id=4001, reason=MemReason.RATE, rss_bytes=100 * MiB, threshold_bytes=0,
                     rate_bytes_per_s=0, growth_bytes=8 * MiB, window_ns=10_000_000, pid=1, ts_ns=int(t0 * 1e9))
    e._on_mem(burst)
    assert not low.actions                                   # credited with 32 MiB/s, not 800
    # 0.3 s later it holds 250 MiB more: 833 MiB/s measured, 1.7 GiB in 2 s > 600 MiB left.
    e._on_mem(_growth(4001, 350 * MiB, 8 * MiB, t0 + 0.3))
    assert [a["action"] for a in low.actions] == ["throttle"]
    assert "833.3 MiB/s" in low.actions[0]["reason"]


def _high_and_low():
    """An enforcer with a high agent (800) running a batch call and a low agent (100)
    running a normal one; returns (e, app, high call, low call)."""
    e, app = make(steps="[throttle, freeze, kill]")
    for aid, prio in (("hi", 800), ("lo", 100)):
        app.ctl.agents[aid] = Agent(agent_id=aid, cgroup=f"r/agents/{aid}", agent_class="normal", priority=prio)
    high = add(app, e, "hi", "0001-batch", 20, {cgf.MEMORY_MAX: "max"})
    low = add(app, e, "lo", "0001-normal", 50, {cgf.MEMORY_MAX: "max"})
    for t in (high, low):
        app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = t.placement.limits[cgf.MEMORY_HIGH]
    return e, app, high, low


def test_memory_watch_on_shared_memory_acts_on_the_lowest_priority_agent_not_the_grower():
    """A high agent's call grows fast and the memory all agents share runs out: the low
    agent's call yields, the growing high call is left alone. (An agent's own memory.max
    running out stays that agent's business: the test above.)"""
    import time as _time
    e, app, grower, bystander = _high_and_low()
    e.available_fn = lambda: 200 * MiB
    e.memwatch = types.SimpleNamespace(set_limit=lambda *a, **k: None, clear=lambda cg: None)
    for n, t in enumerate((grower, bystander)):
        t.run.cgroup_id = 5000 + n
        e.on_tool_start(app.ctl.agents[t.agent_id], t)
    e._on_mem(_growth(5000, 300 * MiB, 35 * MiB, _time.monotonic()))   # 140 MiB/s x 2 s > 200 MiB
    assert [a["action"] for a in bystander.actions] == ["throttle"]
    assert not grower.actions
    assert "the agentd tree" in bystander.actions[0]["reason"]


def test_an_agents_psi_stall_on_shared_memory_makes_the_lowest_priority_agent_yield():
    """An agent's memory.pressure fires, but it has no limit of its own near: the memory
    all agents share is short, so the lowest-priority agent's call yields first. With its
    own memory.max nearly reached, the stall stays its own business."""
    import time as _time
    now = _time.monotonic()
    e, app, mine, other = _high_and_low()
    e.available_fn = lambda: 100 * MiB         # short: a throttle holds the call back
    hi_cg = app.ctl.agents["hi"].cgroup
    app.fs.files[(hi_cg, cgf.MEMORY_MAX)] = "max"
    app.fs.files[(hi_cg, cgf.MEMORY_HIGH)] = "max"
    app.fs.files[(hi_cg, cgf.MEMORY_CURRENT)] = str(300 * MiB)
    e._on_pressure("hi", now, "psi-trigger")
    assert [a["action"] for a in other.actions] == ["throttle"] and not mine.actions
    assert "felt by agent hi" in other.actions[0]["reason"]
    # its own memory.max nearly reached: its own calls go first
    e, app, mine, other = _high_and_low()
    e.available_fn = lambda: 100 * MiB
    app.fs.files[(hi_cg, cgf.MEMORY_MAX)] = str(320 * MiB)
    app.fs.files[(hi_cg, cgf.MEMORY_CURRENT)] = str(300 * MiB)
    e._on_pressure("hi", now, "psi-trigger")
    assert [a["action"] for a in mine.actions] == ["throttle"] and not other.actions


def _frozen_call_with_forecast(avail):
    """A low call frozen under pressure at t=100, forecast to grow from 10 MiB to 1 GiB,
    next to a running interactive call forecast to grow by 54 MiB, on a host with `avail`
    bytes left; relief_interval_s 10, PSI window 2 s, one ladder step per 5 s (only the
    low call is frozen)."""
    policy = load_policy_text(POLICY.format(kill_main="false", steps="[freeze]").replace(
        "relief_interval_s: 2.0}", "relief_interval_s: 10.0, psi_window_us: 2000000}").replace(
        "step_interval_s: 1.0", "step_interval_s: 5.0"), host_memory_bytes=8 * GiB)
    e, app = make(steps="[freeze]")
    app.policy = policy
    e._follow_reload()
    e.available_fn = lambda: avail
    t = add(app, e, "a", "0001-batch", 20)
    other = add(app, e, "b", "0001-interactive", 80)
    for call, peak in ((t, GiB), (other, 64 * MiB)):
        e.tools[call.key].evidence = True
        replant(app, call, forecast=types.SimpleNamespace(peak_bytes=peak))
    t = app.ctl.agents["a"].tools["0001-batch"]
    e._on_pressure("", 100.0, "test")
    e.tick(100.5)
    assert t.frozen
    return e, t


def _thawed_at(e, t, until):
    now = 100.5
    while now < until and t.frozen:
        now += 0.5
        e.tick(now)
    return now if not t.frozen else None


def test_a_frozen_call_that_fits_again_is_thawed_a_psi_window_after_the_pressure():
    e, t = _frozen_call_with_forecast(avail=2 * GiB)
    # Pressure holds 1.5 windows (to 103 s); one window of calm after the event: thawed
    # well before the 10 s relief interval.
    at = _thawed_at(e, t, 115)
    assert at is not None and at <= 104.0
    assert "fits in the memory left" in t.actions[-1]["reason"]


def test_a_frozen_call_that_would_not_fit_waits_the_whole_relief_interval():
    e, t = _frozen_call_with_forecast(avail=512 * MiB)     # needs 1014 + 54 MiB
    at = _thawed_at(e, t, 115)
    assert at is not None and at >= 110.0


def _pressure_files(tmp_path, app, e):
    """Real pressure files under tmp_path for the tree and every cgroup (the FS double has
    none); returns a function writing a `some total=` figure into one."""
    import os

    def path(cg, name=None):
        return str(tmp_path / (cg.replace("/", "_") + "." + (name or "dir")))
    app.fs.path = path

    def write(cg, total):
        with open(path(cg, cgf.MEMORY_PRESSURE), "w") as f:
            f.write(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
                    f"full avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n")
    write("r", 0)
    e.watch.watch("", path("r", cgf.MEMORY_PRESSURE))
    assert os.path.exists(path("r", cgf.MEMORY_PRESSURE))
    return write


def test_the_stall_of_a_call_agentd_throttled_does_not_escalate_the_ladder(tmp_path):
    e, app = make(steps="[throttle, freeze, kill]")
    write = _pressure_files(tmp_path, app, e)
    t = add(app, e, "a", "0001-batch", 20, limits={cgf.MEMORY_HIGH: str(64 * MiB)})
    t.run.limits_applied = {cgf.MEMORY_HIGH: str(64 * MiB)}
    e.tools[t.key].applied = ["throttle"]          # the ladder throttled it just before
    e.ladder.last_step = 99.9
    write(t.cgroup, 0)
    e.tick(100.0)                                   # base readings: tree and call
    # In the next second the tree stalled 1 s, 0.99 s of it in the throttled call.
    write("r", 1_000_000)
    write(t.cgroup, 990_000)
    e._on_pressure("", 101.0, "psi-trigger")
    assert not t.frozen and not any(w[1] in (cgf.FREEZE, cgf.KILL) for w in app.fs.writes)
    assert e.counters["pressure_own_stall_total"] == 1
    ignored = [f for kind, f in app.events.got if kind == "pressure_ignored"]
    assert ignored and ignored[0]["held"] == [t.key] and ignored[0]["stall_us"] == 1_000_000
    # Later a stall the call does not explain (other tasks wait on memory): the ladder acts.
    write("r", 2_000_000)
    write(t.cgroup, 1_200_000)
    e._on_pressure("", 102.0, "psi-trigger")
    assert t.frozen


def test_a_call_that_stalls_at_its_memory_high_before_the_next_tick_is_its_own_doing(tmp_path):
    # The tree's counter was read on a tick when no call ran; the call starts after it,
    # grows into its class's memory.high and stalls, and the trigger fires before another
    # tick. Its stall is known from its start (a new cgroup's counter starts at zero), so
    # the tree's stall is set against it. Before, the tree was read only while calls ran:
    # no base, so the stall counted as a shortage and the ladder stepped on the call.
    e, app = make(steps="[throttle, freeze, kill]")
    write = _pressure_files(tmp_path, app, e)
    e.tick(100.0)                                   # no call yet: the tree's base reading
    t = add(app, e, "a", "0001-held", 20, limits={cgf.MEMORY_HIGH: str(48 * MiB)})
    t.run.limits_applied = {cgf.MEMORY_HIGH: str(48 * MiB)}
    t = replant(app, t, started_mono=100.2)
    e.tools[t.key].current = 48 * MiB               # at its memory.high
    write("r", 400_000)
    write(t.cgroup, 395_000)
    e._on_pressure("", 100.7, "psi-trigger")
    assert not any(w[1] in (cgf.MEMORY_HIGH, cgf.FREEZE, cgf.KILL) for w in app.fs.writes), app.fs.writes
    assert e.tools[t.key].applied == []
    assert e.counters["pressure_own_stall_total"] == 1
    ignored = [f for kind, f in app.events.got if kind == "pressure_ignored"]
    assert ignored and ignored[0]["held"] == [t.key] and ignored[0]["held_us"] == 395_000


def test_a_call_held_by_its_agents_own_limit_is_not_agentds_doing(tmp_path):
    # The agent's memory.high binds: its class's limit makes the stall, and the ladder acts
    # on it as before (tests/kernel/test_agentd_enforce.py's ladder test).
    e, app = make(steps="[throttle, freeze, kill]")
    write = _pressure_files(tmp_path, app, e)
    t = add(app, e, "a", "0001-batch", 20)
    t.run.limits_applied = {cgf.MEMORY_HIGH: str(64 * MiB)}
    e.tools[t.key].applied = ["throttle"]
    e.ladder.last_step = 99.9
    app.fs.files[("r/agents/a", cgf.MEMORY_HIGH)] = str(96 * MiB)
    app.fs.files[("r/agents/a", cgf.MEMORY_CURRENT)] = str(95 * MiB)
    write(t.cgroup, 0)
    e.tick(100.0)
    write("r", 1_000_000)
    write(t.cgroup, 1_000_000)
    e._on_pressure("", 101.0, "psi-trigger")
    assert t.frozen
    assert "pressure_own_stall_total" not in e.counters


def test_a_resize_bounds_the_forecasts_by_the_new_size():
    e, app = make()
    e.on_memory_size(2 * GiB)
    assert e.fc.forecaster.host_budget == 2 * GiB


def test_memory_watch_projects_a_call_below_its_forecast_only_up_to_the_forecast():
    """Fast growth with a forecast behind it: what is still to come is the forecast's rest,
    not the burst's pace over the whole horizon. Past its forecast, the pace counts."""
    from agentd.monitor.events import MemEvent, MemReason
    e, app = make()
    e.memwatch = types.SimpleNamespace(set_limit=lambda *a, **k: None, clear=lambda cg: None)
    t = add(app, e, "a", "0001-batch", 20, {cgf.MEMORY_MAX: "max"})
    t.run.cgroup_id = 4242
    e.on_tool_start(app.ctl.agents["a"], t)
    st = e.tools[t.key]
    st.evidence = True
    t = replant(app, t, forecast=types.SimpleNamespace(peak_bytes=120 * MiB))
    e.available_fn = lambda: 200 * MiB

    def grow(rss, growth):
        e._on_mem(MemEvent(cgroup_id=4242, reason=next(iter(MemReason)), rss_bytes=rss, threshold_bytes=0,
                           rate_bytes_per_s=0, growth_bytes=growth, window_ns=250_000_000, pid=1, ts_ns=0))
    # 250 MiB/s x 2 s = 500 MiB > 200 MiB left, but the forecast leaves 100 MiB to come.
    grow(20 * MiB, 62 * MiB)
    assert not e.ladder.under_pressure(time.monotonic())
    # Past its forecast, the pace is all there is: urgent.
    st.watch_prev = None
    grow(130 * MiB, 62 * MiB)
    assert e.ladder.urgent(time.monotonic())


def test_a_call_thawed_into_the_same_stall_is_killed_next():
    e, app = make(steps="[freeze, kill]")
    t = add(app, e, "a", "0001-batch", 20)
    e._on_pressure("", 100.0, "test")
    assert t.frozen
    now = 100.0
    while t.frozen and now < 130:             # calm: relief undoes both steps
        now += 0.5
        e.tick(now)
    assert not t.frozen
    relieved = time.monotonic()
    # The pressure is back within the relapse window (real time: the enforcer's clock).
    e._on_pressure("", now + 0.5, "test")
    assert time.monotonic() - relieved < e._relapse_s()
    assert [a["action"] for a in t.actions][-1] == "kill", t.actions


def test_a_throttled_and_frozen_call_that_fits_gets_its_limit_back_and_resumes_in_one_tick():
    """A paused call that fits again is not kept frozen another quiet window between the
    restore and the thaw: both come in the same tick, the limit first."""
    policy = load_policy_text(POLICY.format(kill_main="false", steps="[throttle, freeze]").replace(
        "relief_interval_s: 2.0}", "relief_interval_s: 10.0, psi_window_us: 2000000}"), host_memory_bytes=8 * GiB)
    e, app = make(steps="[throttle, freeze]")
    app.policy = policy
    e._follow_reload()
    e.available_fn = lambda: 100 * MiB      # short: the throttle holds it to 64 MiB
    t = add(app, e, "a", "0001-batch", 20)
    app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] = str(256 * MiB)
    e.tools[t.key].evidence = True
    t = replant(app, t, forecast=types.SimpleNamespace(peak_bytes=200 * MiB))
    e._on_pressure("", 100.0, "test")
    e._on_pressure("", 102.0, "test")      # the stall goes on: the next step
    e.tick(102.0)
    assert [a["action"] for a in t.actions] == ["throttle", "freeze"] and t.frozen
    assert int(app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)]) < 256 * MiB
    e.available_fn = lambda: 2 * GiB        # the spike passed: its 200 MiB fit again
    now = 102.0
    while t.frozen and now < 115:
        now += 0.5
        e.tick(now)
    assert not t.frozen and now <= 106.0       # one PSI window after the pressure's hold
    assert [a["action"] for a in t.actions] == ["throttle", "freeze", "restore", "thaw"]
    assert t.actions[3]["ts"] - t.actions[2]["ts"] < 0.1
    assert app.fs.files[(t.cgroup, cgf.MEMORY_HIGH)] == str(256 * MiB)
    assert e.tools[t.key].applied == []


def test_admission_sees_the_most_a_call_has_held():
    e, app = make()
    t = add(app, e, "a1", "t1", 50)
    t = replant(app, t, started_mono=time.monotonic())
    readings = iter([300 * MiB, 40 * MiB])
    app.ctl.sample_tool = lambda tool: next(readings)
    e.tick(100.0)
    e.tick(101.0)
    (r,) = e.admitter.running()
    assert (r.current, r.seen) == (40 * MiB, 300 * MiB)


def paused_with_swap():
    """A batch call holding 96 MiB, paused by the ladder on a host with free swap."""
    e, app = make(steps="[freeze]", swap_free=GiB)
    low = add(app, e, "a", "0001-batch", 20)
    with_swap(app, low)
    e._on_pressure("", 100.0, "test")
    assert low.frozen
    return e, app, low


def test_a_paused_call_goes_to_swap_and_gets_its_class_limit_back_before_its_thaw():
    e, app, low = paused_with_swap()
    mine = [w[1:] for w in app.fs.writes if w[0] == low.cgroup]
    # Frozen first, then its swap opened and its memory reclaimed, a step (64 MiB) per write.
    assert mine == [(cgf.FREEZE, "1"), (cgf.MEMORY_SWAP_MAX, "max"), ("memory.zswap.max", "max"),
                    (cgf.MEMORY_RECLAIM, str(64 * MiB))]
    assert app.fs.read_int(low.cgroup, cgf.MEMORY_CURRENT) == 32 * MiB
    assert e.tools[low.key].offloaded             # two thirds of it left memory: room made
    assert any(k == "swap_out" for k, _ in app.events.got)
    app.ctl.sample_tool = lambda t: app.fs.read_int(t.cgroup, cgf.MEMORY_CURRENT)
    e.tick(101.0)                                 # the rest at the next tick
    assert app.fs.read_int(low.cgroup, cgf.MEMORY_CURRENT) == 0
    assert app.fs.read_int(low.cgroup, "memory.swap.current") == 96 * MiB
    t = 101.5
    while t < 115 and low.frozen:
        e.tick(t)
        t += 0.5
    assert not low.frozen
    mine = [w[1:] for w in app.fs.writes if w[0] == low.cgroup][4:]
    # The class's value (0) back before the thaw: the call swaps no more once it runs.
    assert mine == [(cgf.MEMORY_RECLAIM, str(32 * MiB)), (cgf.MEMORY_SWAP_MAX, "0"), ("memory.zswap.max", "0"),
                    (cgf.FREEZE, "0")]
    assert not e.tools[low.key].offloaded


def test_agentds_stop_puts_a_paused_calls_swap_limits_back_before_its_thaw():
    # The call runs on without agentd: with the class's swap limit (0), not the pause's "max".
    e, app, low = paused_with_swap()
    n = len(app.fs.writes)
    asyncio.run(e.stop())
    mine = [w[1:] for w in app.fs.writes[n:] if w[0] == low.cgroup]
    assert mine == [(cgf.MEMORY_SWAP_MAX, "0"), ("memory.zswap.max", "0"), (cgf.FREEZE, "0")]


def test_a_thaw_through_the_api_puts_a_paused_calls_swap_limits_back_first():
    # An admin's `thaw` goes to the actuator, not the ladder: the call must still run on
    # with its class's swap limit (0), and the ladder's own thaw later does not write it twice.
    e, app, low = paused_with_swap()
    assert app.fs.files[(low.cgroup, cgf.MEMORY_SWAP_MAX)] == "max"
    n = len(app.fs.writes)
    e.actuator.requested(low, "thaw")
    mine = [w[1:] for w in app.fs.writes[n:] if w[0] == low.cgroup]
    assert mine == [(cgf.MEMORY_SWAP_MAX, "0"), ("memory.zswap.max", "0"), (cgf.FREEZE, "0")]
    assert any(k == "swap_back" for k, _ in app.events.got)
    n = len(app.fs.writes)
    asyncio.run(e.stop())
    assert not [w for w in app.fs.writes[n:] if w[0] == low.cgroup and w[1] != cgf.FREEZE]


def test_without_swap_no_call_is_frozen_beside_a_paused_one():
    # No free swap: the frozen call keeps its 96 MiB, so freezing the second call would
    # stop both and free nothing. The second is never frozen; nothing goes to swap.
    e, app = make(steps="[freeze]", swap_free=0)
    low = add(app, e, "a", "0001-batch", 20)
    high = add(app, e, "a", "0002-interactive", 80)
    with_swap(app, low, high)
    for t in (100.0, 101.0, 102.0, 103.0):
        e._on_pressure("", t, "test")
    assert low.frozen and not high.frozen
    assert not [w for w in app.fs.writes if w[1] in (cgf.MEMORY_SWAP_MAX, cgf.MEMORY_RECLAIM)]


def test_a_dry_run_decides_the_swap_out_and_writes_nothing():
    e, app = make(steps="[freeze]", swap_free=GiB)
    e.actuator.dry_run = True
    low = add(app, e, "a", "0001-batch", 20)
    high = add(app, e, "a", "0002-interactive", 80)
    with_swap(app, low, high)
    for t in (100.0, 101.0):
        e._on_pressure("", t, "test")
    assert not [w for w in app.fs.writes if w[0] in (low.cgroup, high.cgroup)]
    would = [f for k, f in app.events.got if k == "dry_run" and f.get("what") == "send to swap"]
    assert would and would[0]["changes"][cgf.MEMORY_SWAP_MAX] == ["0", "max"]
    # Nothing really left memory: the ladder does not count the pause as room.
    assert not e.tools[low.key].offloaded
