"""agentd's sched_ext scheduler in a kernel that has sched_ext (the kernel-tier VM):
it loads and unloads, agent tasks run under SCHED_EXT and are scheduled by it, map
entries follow agents and tool calls, and an ejection is noticed, falls back and retries."""

import asyncio
import sys
import types

import pytest

from agentd.kernel import probe
from agentd.kernel import sched_ext as kse
from agentd.model import Agent, ToolCall, ToolPlan
from agentd.policy.loader import load_policy
from agentd.sched.hook import CpuScheduler
from agentd.kernel.bpf_scx import ScxScheduler, make_config

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel

SYSFS = kse.SchedExtSysfs()


class Events:
    def __init__(self):
        self.emitted = []

    def emit(self, kind, **kw):
        self.emitted.append(kind)


@pytest.fixture
def hook(cgfs):
    policy = load_policy("default")
    app = types.SimpleNamespace(fs=cgfs, caps=probe.probe(cgfs.mount), policy=policy, events=Events())
    clock = types.SimpleNamespace(t=0.0)
    h = CpuScheduler(app, clock=lambda: clock.t)
    h.fake_clock = clock

    async def start():
        await h.start()
        h.task.cancel()          # the test drives check() itself
        h.task = None
    asyncio.run(start())
    try:
        yield h
    finally:
        asyncio.run(h.stop())
    wait_for(lambda: SYSFS.state() == "disabled", 10, "sched_ext state disabled after stop")


def agent_in(tree, name="a1"):
    a = Agent(agent_id=name, cgroup=f"{tree.name}/{name}", agent_class="normal", priority=50)
    for cg in (a.cgroup, a.main_cgroup, a.tools_cgroup):
        tree.fs.mkdir(cg)
    tree.fs.enable_controllers(a.cgroup, ("cpu",))
    tree.fs.enable_controllers(a.tools_cgroup, ("cpu",))
    return a


def test_load_enables_and_unload_disables():
    assert SYSFS.state() == "disabled"
    s = ScxScheduler(make_config((1_000_000, 5_000_000, 20_000_000))).load()
    try:
        assert SYSFS.state() == "enabled"
        assert SYSFS.ops_name() == "agentd"
        assert s.running()
    finally:
        s.close()
    wait_for(lambda: SYSFS.state() == "disabled", 10, "sched_ext state disabled after close")


def test_agent_tasks_run_under_sched_ext_and_entries_follow_them(hook, cgtree, hog):
    assert hook.modes() == {"cpu": "sched_ext"}
    scx = hook.scx
    a = agent_in(cgtree)
    hook.on_agent_start(a)
    main = cgtree.spawn(a.main_cgroup, [hog, "spin"])
    hook.check()                    # the sweep moves the agent's own process
    assert kse.policy_of(main.pid) == kse.SCHED_EXT

    tcg = f"{a.tools_cgroup}/0001-batch"
    cgtree.fs.mkdir(tcg)
    plan = ToolPlan(tool_class="batch", priority=20, limits={}, latency="batch")
    tool_proc = cgtree.spawn(tcg, [hog, "spin"])
    t = ToolCall(agent_id=a.agent_id, tool_id="0001-batch", cgroup=tcg, argv=["spin"], plan=plan,
                 pid=tool_proc.pid, cgroup_id=cgtree.fs.cgroup_id(tcg))
    hook.on_tool_start(a, t)
    assert kse.policy_of(tool_proc.pid) == kse.SCHED_EXT
    entry = scx.cgroup(t.cgroup_id)
    assert (entry.slot, entry.weight, entry.latency) == (1, 50, 2)
    main_id = cgtree.fs.cgroup_id(a.main_cgroup)
    assert scx.cgroup(main_id).latency == 0          # the agent's own process is interactive
    # The scheduler charges virtual time only in its own callbacks: it ran both tasks.
    wait_for(lambda: scx.cgroup(t.cgroup_id).vtime > 0 and scx.cgroup(main_id).vtime > 0, 10,
             "both cgroups charged by the BPF scheduler")
    assert scx.stats()["enqueue"] > 0

    # The call ends with its process still running (a straggler left to run): the entry
    # stays, so the scheduler keeps it in its agent's slot and class, until the kernel says
    # the cgroup is empty.
    hook.on_tool_end(a, t, {})
    hook.check()
    v0 = scx.cgroup(t.cgroup_id).vtime
    wait_for(lambda: scx.cgroup(t.cgroup_id).vtime > v0, 10, "the leftover process charged to its call's entry")
    assert (scx.cgroup(t.cgroup_id).slot, scx.cgroup(t.cgroup_id).weight) == (1, 50)
    tool_proc.kill()
    tool_proc.wait()
    wait_for(lambda: not cgtree.fs.populated(tcg), 10, "the call's cgroup to empty")
    hook.check()
    assert scx.cgroup(t.cgroup_id) is None
    hook.on_agent_end(a)
    assert scx.cgroup_ids() == []


def test_ejection_falls_back_to_cpu_weight_and_reloads(hook, cgtree):
    a = agent_in(cgtree)
    hook.on_agent_start(a)
    cgtree.fs.write(a.cgroup, "cpu.weight", "37")    # sched_ext mode leaves cpu.weight alone
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("S")                # sysrq-S: the kernel ejects the BPF scheduler
    wait_for(lambda: SYSFS.state() == "disabled", 10, "sched_ext disabled by sysrq-S")
    hook.check()
    assert hook.modes() == {"cpu": "cpu_weight"}
    assert hook.ejections == 1
    assert "sysrq" in hook.last_exit.lower()
    assert "sched_ext_ejected" in hook.app.events.emitted
    assert cgtree.fs.read(a.cgroup, "cpu.weight").strip() == "100"

    hook.fake_clock.t = hook.retry_at - 0.1
    hook.check()
    assert hook.modes() == {"cpu": "cpu_weight"}     # still backing off
    hook.fake_clock.t = hook.retry_at + 0.1
    hook.check()
    assert hook.modes() == {"cpu": "sched_ext"}
    assert SYSFS.state() == "enabled"
    assert hook.scx.cgroup(cgtree.fs.cgroup_id(a.main_cgroup)) is not None


def _schedstat(pid):
    """(run_delay ns, timeslices) of `pid`: time spent runnable but waiting, and how often it ran."""
    with open(f"/proc/{pid}/schedstat") as f:
        _run, delay, count = (int(x) for x in f.read().split())
    return delay, count


def test_pinned_interactive_wakeups_preempt_batch_work(cgtree, hog, tmp_path):
    """A task allowed on one CPU only never passes through ops.select_cpu (the kernel
    skips it), so its wake-ups must be preempting from ops.enqueue: otherwise it waits
    for the batch spinner on its CPU to use up a whole batch slice."""
    slices = (1_000_000, 5_000_000, 20_000_000)
    batch_cg, inter_cg = cgtree.child("batch"), cgtree.child("interactive")
    ready = tmp_path / "ready"
    s = ScxScheduler(make_config(slices)).load()
    try:
        s.set_agent(1, 100)
        s.set_cgroup(cgtree.fs.cgroup_id(batch_cg), 1, 50, "batch")
        s.set_cgroup(cgtree.fs.cgroup_id(inter_cg), 1, 200, "interactive")
        spinners = [cgtree.spawn(batch_cg, [hog, "spin"], cpus={0}) for _ in range(2)]
        sleeper = cgtree.spawn(inter_cg, [sys.executable, "-S", "-c",
                                          f"import time\nopen({str(ready)!r}, 'w').close()\n"
                                          "while True: time.sleep(0.005)"], cpus={0})
        for p in (*spinners, sleeper):
            assert kse.set_ext_policy(p.pid)
        wait_for(ready.exists, 120, "the pinned sleeper in its loop", step=0.5)
        before = s.stats()
        d0, n0 = _schedstat(sleeper.pid)
        wait_for(lambda: _schedstat(sleeper.pid)[1] - n0 >= 100, 60, "100 wake-ups of the pinned sleeper",
                 step=0.5)
        d1, n1 = _schedstat(sleeper.pid)
        after = s.stats()
        assert after["preempt"] - before["preempt"] >= (n1 - n0) // 2, (before, after)
        # Waiting for the spinner's slice to run out would average half a batch slice.
        assert (d1 - d0) / (n1 - n0) < slices[2] / 4, f"mean wait {(d1 - d0) / (n1 - n0) / 1e6:.2f} ms"
    finally:
        s.close()
