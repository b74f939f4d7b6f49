"""The GPU hook over a controller on a fake cgroup tree and a scripted NVML: placement,
offload, queueing, budgets by priority, attribution and stats."""

import asyncio
import json
import types

import pytest

from agentd.api.outbox import Outbox
from agentd.controller import Controller
from agentd.enforce.actuator import Actuator
from agentd.daemon import App
from agentd.errors import BpfError
from agentd.eventlog import EventLog, read_events
from agentd.forecast import Forecast, HistoryStore
from agentd.gpu.fake import FakeNvml
from agentd.gpu.history import FLOOR_BYTES, GpuForecasts
from agentd.gpu.hook import GpuHook
from agentd.gpu.nvml import Nvml
from agentd.kernel.fakes import FakeCgroupFS
from agentd.policy.planner import Planner
from agentd.sched import build as sched_build
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore
from agentd.units import format_size

GiB = 1 << 30

POLICY = """
version: 1
defaults: {agent_class: normal, tool_class: normal}
agent_classes:
  high: {priority: 800, gpu: {memory_budget: 40Gi, priority: 800, over_budget: notify}}
  normal: {priority: 400, gpu: {memory_budget: max, priority: 400}}
  low: {priority: 100, gpu: {memory_budget: 10Gi, priority: 100, over_budget: kill}}
tool_classes:
  normal: {priority: 50}
  train: {priority: 30, device: gpu, gpu: {fallback: offload, offload_cpu_weight: 300,
                                            mps_active_thread_percentage: 50, mps_pinned_mem_limit: 25%}}
  gputest: {priority: 20, device: gpu, gpu: {fallback: wait}}
  infer: {priority: 60, device: gpu, gpu: {fallback: wait}}
  auto: {priority: 50, device: auto}
  autop: {priority: 50, device: auto, gpu: {prior: 6Gi, offload_cpu_weight: 250}}
  cpuonly: {priority: 80, device: cpu}
tool_rules:
  - {name: big, match: {program: [gen.py]}, class: autop, gpu: {prior: 12Gi}}
admission: {max_wait_s: 2, on_timeout: run}
"""


class Forecasts:
    """GPU forecasts by program name (argv[0]); confidence 0 for programs never seen."""

    def __init__(self, table):
        self.table = table
        self.mode = "test"
        self.recorded = []

    def forecast(self, argv, tool_class, agent_id, agent_class):
        v = self.table.get(argv[0])
        return Forecast(v or 2 * GiB, 1.0 if v else 0.0, "test")

    def record(self, argv, tool_class, agent_id, agent_class, peak, duration, action="", censored=False):
        self.recorded.append((argv[0], peak))
        self.censored = getattr(self, "censored", []) + [(argv[0], censored)]

    def close(self):
        pass


class Guard:
    """Records the cgroups the device program would be attached to (tests/host and
    tests/kernel attach the real one)."""

    majors = (195,)

    def __init__(self, fail=None):
        self.hidden = []
        self.fail = fail

    def hide(self, cgroup_dir):
        if self.fail:
            raise BpfError(self.fail)
        self.hidden.append(cgroup_dir)

    def close(self):
        pass


class Conn:
    def __init__(self):
        self.sent = []

    def send(self, data):
        self.sent.append(json.loads(data))


class World:
    def __init__(self, tmp_path, devices, forecasts, mps=None):
        self.fs = FakeCgroupFS(str(tmp_path / "cg"))
        self.cg_of = {}
        procfs = types.SimpleNamespace(cgroup=lambda pid: self.cg_of[pid], set_oom_score_adj=lambda pid, v: None)
        policy = load_policy_text(POLICY, "t.yaml", host_memory_bytes=64 * GiB)
        self.events = EventLog(str(tmp_path / "ev.jsonl"))
        self.outbox = Outbox()
        self.ctl = Controller(self.fs, "agentd", None, Planner(policy, 64 * GiB), StateStore(str(tmp_path / "st")),
                              self.events, procfs, actuator=Actuator(self.fs, self.events, procfs=procfs, tell=self.outbox.tell))
        self.ctl.setup()
        caps = types.SimpleNamespace(controllers=("cpu", "memory", "pids"), sched_ext=False)
        self.app = types.SimpleNamespace(policy=policy, ctl=self.ctl, fs=self.fs, events=self.events, procfs=procfs,
                                         state_dir=None, caps=caps)
        self.fake = FakeNvml({"devices": devices, "mps": mps})
        self.guard = Guard()
        self.hook = GpuHook(self.app, Nvml.open(self.fake), Forecasts(forecasts), devguard=self.guard)
        # The stages the daemon builds that act on a tool call's CPU and GPU, in the
        # daemon's order (App.STAGES), sharing one hook list as the daemon's do.
        self.sched = sched_build(self.app)
        built = {"sched": self.sched, "gpu": self.hook}
        self.ctl.hooks = [built[name] for name, *_ in App.STAGES if name in built]
        self.pid = 1000

    async def start(self, agent, argv, cls=None, conn=None):
        """What op_tool_start does: admit, then start_tool with nothing awaited in between."""
        if not self.sched.started:
            await self.sched.start()      # as the daemon starts its stages before serving
        self.pid += 1
        pid = self.pid
        conn = conn or Conn()
        ticket = await self.ctl.pipeline.admit(agent, argv, cls, pid=pid, tell=Outbox.to(conn))
        tool = self.ctl.start_tool(agent, pid, argv, cls, ticket=ticket)
        self.outbox.bind(tool.key, conn)
        self.cg_of[pid] = "/" + tool.cgroup
        return tool

    def hold(self, tool, device, used):
        """The tool call's process holds `used` bytes on `device` (NVML lists it)."""
        procs = self.fake.script["devices"][device].setdefault("processes", [])
        procs[:] = [p for p in procs if p["pid"] != tool.pid]
        if used:
            procs.append({"pid": tool.pid, "used": used})

    def end(self, tool):
        for d in self.fake.script["devices"]:
            d["processes"] = [p for p in d.get("processes", []) if p["pid"] != tool.pid]
        return self.ctl.finish_tool(tool, status={"exit": 0})


def dev(total, other=0, uuid=None):
    return {"memory_total": total, "memory_other": other, "uuid": uuid, "name": "Fake GPU", "processes": []}


def run(coro):
    return asyncio.run(coro)


def test_placed_on_the_gpu_with_room_and_told(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB, 12 * GiB), uuid="GPU-0"), dict(dev(16 * GiB, 2 * GiB), uuid="GPU-1")],
              {"train.py": 6 * GiB})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        return await w.start(a, ["train.py"], "train")
    t = run(main())
    assert t.env == {"CUDA_VISIBLE_DEVICES": "GPU-1"}      # no MPS daemon: no MPS variables
    assert t.gpu_placement["outcome"] == "gpu" and t.gpu_placement["device"] == 1
    assert "runs on GPU 1" in t.messages[0] and format_size(6 * GiB) in t.messages[0]
    assert w.hook.stats["gpu_placements"]["gpu"] == 1


def test_mps_settings_from_policy_when_mps_runs(tmp_path):
    w = World(tmp_path, [dict(dev(32 * GiB), uuid="GPU-0")], {"train.py": 4 * GiB}, mps=True)

    async def main():
        return await w.start(w.ctl.create_agent("ag", "normal"), ["train.py"], "train")
    t = run(main())
    assert t.env == {"CUDA_VISIBLE_DEVICES": "GPU-0", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
                     "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={(32 * GiB // 4) >> 20}M"}


def test_no_room_offloads_to_cpu_with_weight_and_reservations_count(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"train.py": 10 * GiB})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        first = await w.start(a, ["train.py"], "train")
        # The first call holds nothing yet: its forecast is reserved, so the second goes to the CPU.
        second = await w.start(a, ["train.py"], "train")
        return first, second
    first, second = run(main())
    assert first.gpu_placement["outcome"] == "gpu"
    assert second.gpu_placement["outcome"] == "offload" and second.env == {"CUDA_VISIBLE_DEVICES": ""}
    # The offload weight is what the call's cpu.weight file ends at, after every stage the
    # daemon runs at a tool start (the CPU stage writes weights after the GPU stage decided).
    assert second.limits_applied.get("cpu.weight") == "300"
    assert w.fs.read(second.cgroup, "cpu.weight") == "300"
    assert w.sched.prios[second.cgroup].weight == 300
    # The call placed on the GPU keeps its class's weight (priority 30 -> 60).
    assert w.fs.read(first.cgroup, "cpu.weight") == "60"
    assert "runs on the CPU" in second.messages[0] and "no GPU has that much free" in second.messages[0]
    assert w.hook.stats["gpu_placements"]["offload"] == 1


def test_an_offloaded_call_keeps_its_weight_across_a_daemon_restart(tmp_path):
    from agentd.adopt import readopt
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"train.py": 10 * GiB})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        return await w.start(a, ["train.py"], "train"), await w.start(a, ["train.py"], "train")
    _, offloaded = run(main())
    w.fs.write(offloaded.cgroup, "cpu.weight", "100")              # forget it, as a fresh daemon would
    again = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {})   # the same tree and state file

    async def restart():
        await again.sched.start()
        readopt(again.ctl)
    run(restart())
    assert again.ctl.agents["ag"].tools[offloaded.tool_id].offload_cpu_weight == 300
    assert w.fs.read(offloaded.cgroup, "cpu.weight") == "300"


def test_calls_sent_to_the_cpu_have_the_gpus_hidden_by_the_device_program(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"train.py": 10 * GiB})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        on_gpu = await w.start(a, ["train.py"], "train")
        offloaded = await w.start(a, ["train.py"], "train")
        cpu = await w.start(a, ["ls"], "cpuonly")
        # The automatic path: no admit, the process already exec'd (its environment is fixed).
        auto = w.ctl.start_tool(a, 4000, ["train.py"], "train", origin="auto")
        return on_gpu, offloaded, cpu, auto
    on_gpu, offloaded, cpu, auto = run(main())
    assert auto.gpu_placement["outcome"] == "offload"
    assert w.guard.hidden == [w.fs.path(t.cgroup) for t in (offloaded, cpu, auto)]
    assert all(t.gpu_placement["devices_hidden"] for t in (offloaded, cpu, auto))
    assert "devices_hidden" not in on_gpu.gpu_placement
    assert w.hook.modes() == {"gpu": "device-program"}
    assert w.hook.mode_details()["gpu"]["hidden_majors"] == [195]
    ev = [e for e in read_events(str(tmp_path / "ev.jsonl")) if e.get("event") == "gpu_placement"]
    assert [e["devices_hidden"] for e in ev] == [None, True, True, True]


def test_a_device_program_that_cannot_attach_leaves_the_environment_and_warns_once(tmp_path, caplog):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {})
    w.guard.fail = "attaching agentd_devguard to a cgroup: Operation not permitted (errno 1)"

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        return [await w.start(a, ["ls"], "cpuonly") for _ in range(3)]
    calls = run(main())
    assert all(t.env == {"CUDA_VISIBLE_DEVICES": ""} and t.gpu_placement["devices_hidden"] is False for t in calls)
    assert sum("cannot hide the GPUs" in r.getMessage() for r in caplog.records) == 1


def test_cpu_class_sees_no_gpu_and_auto_without_history_is_left_alone(tmp_path):
    w = World(tmp_path, [dev(16 * GiB)], {})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        return await w.start(a, ["ls"], "cpuonly"), await w.start(a, ["pytest"], "auto")
    cpu, auto = run(main())
    assert cpu.env == {"CUDA_VISIBLE_DEVICES": ""} and not cpu.messages
    assert not getattr(auto, "env", None) and auto.gpu_placement["outcome"] == "unmanaged"


def test_auto_with_a_policy_prior_is_managed_from_its_first_run(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {})

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        first = await w.start(a, ["pytest"], "autop")              # the class's prior: 6 GiB
        second = await w.start(a, ["pytest"], "autop")             # 6 + 6 fit in 16 GiB
        big = await w.start(a, ["gen.py"])                         # the rule's prior: 12 GiB
        # The automatic path (no admit, environment fixed): offloaded and its GPUs hidden.
        auto = w.ctl.start_tool(a, 4000, ["pytest"], "autop", origin="auto")
        return first, second, big, auto
    first, second, big, auto = run(main())
    assert first.gpu_placement == {"outcome": "gpu", "device": 0, "forecast_bytes": 6 * GiB, "reason": ""}
    assert second.gpu_placement["outcome"] == "gpu"
    assert big.plan.rule == "big" and big.gpu_placement["forecast_bytes"] == 12 * GiB
    assert big.gpu_placement["outcome"] == "offload" and big.gpu_placement["reason"] == "no_room"
    assert auto.gpu_placement["outcome"] == "offload" and auto.gpu_placement["devices_hidden"]
    assert w.guard.hidden == [w.fs.path(big.cgroup), w.fs.path(auto.cgroup)]
    assert w.fs.read(auto.cgroup, "cpu.weight") == "250"


def test_history_outranks_the_prior(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"pytest": 3 * GiB})

    async def main():
        return await w.start(w.ctl.create_agent("ag", "normal"), ["pytest"], "autop")
    assert run(main()).gpu_placement["forecast_bytes"] == 3 * GiB


def test_auto_with_gpu_history_is_placed(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"pytest": 3 * GiB})

    async def main():
        return await w.start(w.ctl.create_agent("ag", "normal"), ["pytest"], "auto")
    assert run(main()).env == {"CUDA_VISIBLE_DEVICES": "GPU-0"}


def test_waiting_calls_get_the_gpu_by_priority_when_it_frees(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB, 4 * GiB), uuid="GPU-0")],
              {"holder": 10 * GiB, "suite": 8 * GiB, "serve": 8 * GiB})
    order = []

    async def main():
        lo = w.ctl.create_agent("lo", "normal")
        hi = w.ctl.create_agent("hi", "high")
        holder = await w.start(lo, ["holder"], "gputest")
        w.hold(holder, 0, 10 * GiB)
        c_lo, c_hi = Conn(), Conn()

        async def go(agent, argv, cls, conn):
            t = await w.start(agent, argv, cls, conn)
            order.append(t.agent_id)
            return t
        t_lo = asyncio.create_task(go(lo, ["suite"], "gputest", c_lo))
        await asyncio.sleep(0.05)
        t_hi = asyncio.create_task(go(hi, ["serve"], "infer", c_hi))
        await asyncio.sleep(0.05)
        assert order == [] and w.hook.stats["gpu_waiting"] == 2
        w.end(holder)                         # 12 GiB free: room for one 8 GiB call
        await asyncio.sleep(0.05)
        assert order == ["hi"]                # arrived second, higher agent priority: first
        first = await t_hi
        w.hold(first, 0, 8 * GiB)
        w.hook.tick()
        await asyncio.sleep(0.05)
        assert order == ["hi"]                # still no room for the low-priority call
        w.end(first)
        second = await t_lo
        return first, second, c_lo, c_hi
    first, second, c_lo, c_hi = run(main())
    assert order == ["hi", "lo"], second.gpu_placement
    assert first.env["CUDA_VISIBLE_DEVICES"] == "GPU-0" and second.env["CUDA_VISIBLE_DEVICES"] == "GPU-0", \
        second.gpu_placement
    for conn in (c_lo, c_hi):
        assert conn.sent[0]["notice"] == "queued" and "is waiting for a GPU" in conn.sent[0]["message"]
    q = next(a for a in second.actions if a["action"] == "gpu_queue")
    assert q["seconds"] > 0.1 and not q["timed_out"]
    assert "after waiting" in second.messages[0]
    assert w.hook.stats["gpu_queued_total"] == 2


def test_wait_times_out_to_the_cpu(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB, 14 * GiB), uuid="GPU-0")], {"suite": 8 * GiB})

    async def main():
        return await w.start(w.ctl.create_agent("ag", "normal"), ["suite"], "gputest")
    t = run(main())
    assert t.gpu_placement["outcome"] == "offload" and t.env == {"CUDA_VISIBLE_DEVICES": ""}
    q = next(a for a in t.actions if a["action"] == "gpu_queue")
    assert q["timed_out"] and q["seconds"] >= 1.9


def test_attribution_and_metric_stats(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB, GiB), uuid="GPU-0"), dict(dev(16 * GiB), uuid="GPU-1")],
              {"train.py": 2 * GiB})
    w.fake.script["devices"][1]["processes"].append({"pid": 4242, "used": GiB})   # not an agent's
    w.cg_of[4242] = "/system.slice/other"

    async def main():
        a = w.ctl.create_agent("ag", "normal")
        b = w.ctl.create_agent("bg", "normal")
        return a, await w.start(a, ["train.py"], "train"), await w.start(b, ["train.py"], "train")
    a, ta, tb = run(main())
    w.hold(ta, ta.gpu_placement["device"], 3 * GiB)
    w.hold(tb, tb.gpu_placement["device"], GiB)
    # The agent's main process holds some too: it counts towards the agent, not a tool call.
    w.fake.script["devices"][0]["processes"].append({"pid": 77, "used": GiB // 2})
    w.cg_of[77] = "/" + a.main_cgroup
    w.hook.tick()
    s = w.hook.metric_stats()
    assert s["agent_gpu_memory"][("ag", str(ta.gpu_placement["device"]))] >= 3 * GiB
    assert sum(v for (ag, _), v in s["agent_gpu_memory"].items() if ag == "ag") == 3 * GiB + GiB // 2
    assert sum(v for (ag, _), v in s["agent_gpu_memory"].items() if ag == "bg") == GiB
    assert s["gpu_unattributed_bytes"] == GiB
    assert [g["memory_total_bytes"] for g in s["gpus"]] == [16 * GiB, 16 * GiB]
    assert sum(g["memory_used_bytes"] for g in s["gpus"]) == GiB + 3 * GiB + GiB + GiB + GiB // 2
    # The finished call's GPU peak goes to the history.
    w.end(ta)
    assert ("train.py", 3 * GiB) in w.hook.fc.recorded


def test_over_budget_kill_takes_the_lowest_priority_gpu_call(tmp_path):
    w = World(tmp_path, [dict(dev(80 * GiB), uuid="GPU-0")], {"train.py": 3 * GiB, "suite": 3 * GiB})

    async def main():
        a = w.ctl.create_agent("lo", "low")              # 10 GiB budget, over_budget: kill
        return await w.start(a, ["train.py"], "train"), await w.start(a, ["suite"], "gputest")
    train, suite = run(main())
    w.hold(train, 0, 6 * GiB)
    w.hold(suite, 0, 3 * GiB)
    w.hook.tick()
    assert not any(a["action"] == "kill" for t in (train, suite) for a in t.actions)   # 9 GiB <= 10 GiB
    w.hold(suite, 0, 6 * GiB)                            # 12 GiB > 10 GiB
    w.hook.tick()
    killed = [t for t in (train, suite) if any(a["action"] == "kill" for a in t.actions)]
    assert killed == [suite]                             # priority 20 < train's 30
    assert ("/".join(suite.cgroup.split("/")), "cgroup.kill", "1") in [(c, f, v) for c, f, v in w.fs.writes]
    w.hook.tick()                                        # its memory is on its way out: no second victim
    assert not any(a["action"] == "kill" for a in train.actions)
    res = w.end(suite)
    assert res["outcome"] == "killed"
    assert w.hook.stats["gpu_budget_actions"]["kill"] == 1
    # Killed at 6 GiB: its GPU peak goes to the history as a lower bound, not a complete peak.
    assert ("suite", 6 * GiB) in w.hook.fc.recorded and w.hook.fc.censored == [("suite", True)]


def test_over_budget_notify_once_on_the_connection(tmp_path):
    w = World(tmp_path, [dict(dev(80 * GiB), uuid="GPU-0")], {"train.py": 3 * GiB, "serve": 3 * GiB})
    conn = Conn()

    async def main():
        a = w.ctl.create_agent("hi", "high")             # 40 GiB budget, over_budget: notify
        t1 = await w.start(a, ["serve"], "infer")
        return t1, await w.start(a, ["train.py"], "train", conn)
    serve, train = run(main())
    w.hold(serve, 0, 30 * GiB)
    w.hold(train, 0, 20 * GiB)
    w.hook.tick()
    w.hook.tick()
    notices = [m for m in conn.sent if m.get("notice") == "gpu_over_budget"]
    assert len(notices) == 1 and f"over its {format_size(40 * GiB)} budget" in notices[0]["message"]
    assert not any(a["action"] == "kill" for t in (serve, train) for a in t.actions)
    assert [a["action"] for a in train.actions] == ["gpu_over_budget"]
    assert w.hook.stats["gpu_budget_actions"] == {"notify": 1, "kill": 0}


def test_budget_keeps_an_agent_off_the_gpu(tmp_path):
    w = World(tmp_path, [dict(dev(80 * GiB), uuid="GPU-0")], {"train.py": 6 * GiB})

    async def main():
        a = w.ctl.create_agent("lo", "low")              # 10 GiB budget
        return await w.start(a, ["train.py"], "train"), await w.start(a, ["train.py"], "train")
    first, second = run(main())
    assert first.gpu_placement["outcome"] == "gpu"
    assert second.gpu_placement["outcome"] == "offload" and second.gpu_placement["reason"] == "agent_budget"
    assert f"budget ({format_size(10 * GiB)})" in second.messages[0]


def test_gpu_history_forecasts_from_recorded_peaks(tmp_path):
    fc = GpuForecasts(None, 80 * GiB, store=HistoryStore(":memory:"))
    cold = fc.forecast(["python", "train.py"], "train", "ag", "normal")
    assert cold.confidence == 0
    for _ in range(5):
        fc.record(["python", "train.py"], "train", "ag", "normal", 20 * GiB, 3.0)
    fc.record(["ls"], "normal", "ag", "normal", 0, 0.1)        # used no GPU: not recorded
    warm = fc.forecast(["python", "train.py"], "train", "ag", "normal")
    assert warm.confidence > 0 and warm.peak_bytes >= 20 * GiB > cold.peak_bytes
    assert fc.forecast(["ls"], "normal", "ag", "normal").confidence == 0
    assert fc.forecast(["tiny"], "normal", "ag", "normal").peak_bytes >= FLOOR_BYTES
    assert fc.store.count() == 5
    fc.close()


def test_gpu_history_file_in_state_dir(tmp_path):
    fc = GpuForecasts(str(tmp_path / "state"), 16 * GiB)
    fc.record(["python", "x.py"], "train", "ag", "normal", GiB, 1.0)
    fc.close()
    assert (tmp_path / "state" / "gpu-history.sqlite").exists()
    fc = GpuForecasts(str(tmp_path / "state"), 16 * GiB)
    assert fc.store.count() == 1 and fc.mode == "history"
    fc.close()


@pytest.mark.parametrize("policy_name", ["default", "laptop", "multi-tenant"])
def test_shipped_policies_drive_the_hook(tmp_path, policy_name):
    """Every shipped policy's GPU settings are usable by the hook (budgets parse, classes resolve)."""
    from agentd.policy.loader import load_policy
    w = World(tmp_path, [dict(dev(80 * GiB), uuid="GPU-0")], {"python": 4 * GiB})
    w.app.policy = load_policy(policy_name, host_memory_bytes=64 * GiB)
    w.ctl.planner = Planner(w.app.policy, 64 * GiB)

    async def main():
        a = w.ctl.create_agent("ag", None)
        return await w.start(a, ["python", "train.py"])
    t = run(main())
    assert t.gpu_placement["outcome"] in ("gpu", "cpu", "unmanaged", "offload")
    if policy_name == "multi-tenant":
        assert t.plan.tool_class == "gpu-jobs" and t.gpu_placement["outcome"] == "gpu"


@pytest.mark.parametrize("policy_name,prior", [("default", 4 * GiB), ("laptop", 2 * GiB),
                                               ("multi-tenant", 8 * GiB)])
def test_shipped_policies_give_gpu_scripts_a_prior(tmp_path, policy_name, prior):
    """A training script with no GPU history is placed from its first run with the shipped prior."""
    from agentd.policy.loader import load_policy
    w = World(tmp_path, [dict(dev(80 * GiB), uuid="GPU-0")], {})
    w.app.policy = load_policy(policy_name, host_memory_bytes=64 * GiB)
    w.ctl.planner = Planner(w.app.policy, 64 * GiB)

    async def main():
        a = w.ctl.create_agent("ag", None)
        return await w.start(a, ["bash", "-c", "cd model && python train.py --epochs 1"]), \
            await w.start(a, ["bash", "-c", "python -c 'import this'"])
    train, other = run(main())
    assert train.plan.rule == "gpu-scripts"
    assert train.gpu_placement["outcome"] == "gpu" and train.gpu_placement["forecast_bytes"] == prior
    assert other.gpu_placement["outcome"] == "unmanaged"


def test_nvml_failure_keeps_the_last_readings(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB, GiB), uuid="GPU-0")], {})
    w.hook.tick()
    before = w.hook.metric_stats()["gpus"]
    w.fake.script["devices"].clear()                     # the device is lost
    w.hook.tick()
    w.hook.tick()
    assert w.hook.metric_stats()["gpus"] == before
    assert w.hook.counters["nvml_errors_total"] == 2
    w.fake.script["devices"].append(dict(dev(16 * GiB, 2 * GiB), uuid="GPU-0"))
    w.hook.tick()
    assert w.hook.metric_stats()["gpus"][0]["memory_used_bytes"] == 2 * GiB


def test_a_fault_in_the_gpu_stage_does_not_refuse_the_call(tmp_path):
    w = World(tmp_path, [dict(dev(16 * GiB), uuid="GPU-0")], {"train.py": GiB})

    def broken(*a):
        raise RuntimeError("bug")
    w.hook._decide_now = broken

    async def main():
        return await w.start(w.ctl.create_agent("ag", "normal"), ["train.py"], "train")
    t = run(main())
    assert t.cgroup and not w.hook.placed          # started; the plan step logged the fault
