"""The metrics catalog, the collector over a fake cgroup tree, the event tally, the sample log."""

import asyncio
import dataclasses
import os
import re
import time

import pytest
from prometheus_client import generate_latest

from agentd.controller import Controller
from agentd.monitor.sampler import Sampler
from agentd.eventlog import EventLog
from agentd.kernel.fakes import FakeCgroupFS, FakeProc
from agentd.kernel.probe import Capabilities
from agentd.metrics.collector import STATS_KEYS
from agentd.metrics import build_registry, parse_listen
from agentd.metrics.catalog import BY_NAME, CATALOG, HISTOGRAM, render_catalog
from agentd.metrics.samples import SampleLog
from agentd.metrics.tally import MAX_REASONS, EventTally, normalise_reason
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore
from agentd.errors import PolicyError, ProcessGone

GiB = 2**30
HERE = os.path.dirname(os.path.abspath(__file__))
CATALOG_MD = os.path.join(HERE, "..", "..", "agentd", "metrics", "CATALOG.md")

POLICY = """
version: 1
agent_classes:
  normal: {priority: 50, memory: {high: 3Gi, max: 4Gi}, network: {egress: 100Mbit}}
network: {devices: [eth9]}
tool_classes:
  normal: {priority: 50}
  batch: {priority: 20, memory: {max: 1Gi}}
  train: {priority: 30, device: gpu}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
"""


class Proc:
    def __init__(self):
        self.cg_of = {}

    def cgroup(self, pid):
        return self.cg_of.get(pid, "/")

    oom = {}

    def set_oom_score_adj(self, pid, value):
        self.oom[pid] = value

    def hold(self, pid):
        return FakeProc(pid)

    def exe_stat(self, pid):
        raise ProcessGone(f"process {pid} is not in this fake /proc")


class Broken:
    """A stage whose metric_stats() raises: its samples go, the scrape stays."""

    def modes(self):
        return {"pressure": "psi-trigger"}

    def metric_stats(self):
        raise RuntimeError("stage broke")


class App:
    def __init__(self, tmp, hooks=()):
        self.events = EventLog(str(tmp / "ev.jsonl"))
        fs = FakeCgroupFS(str(tmp / "cg"))
        policy = load_policy_text(POLICY, "t.yaml", host_memory_bytes=16 * GiB)
        self.ctl = Controller(fs, "agentd", None, Planner(policy, 16 * GiB), StateStore(str(tmp / "st")),
                              self.events, Proc())
        self.ctl.setup()
        self.hooks = list(hooks)
        self.started = 1700000000.0
        # What the daemon's stages read from the App (daemon.App has the same names).
        self.fs, self.policy, self.root, self.state_dir, self.host_memory = fs, policy, "agentd", "", 16 * GiB
        self.procfs = self.ctl.procfs
        self.sampler = Sampler(self.ctl)
        from agentd.api.server import Server
        self.server = Server(self, str(tmp / "agentd.sock"))     # not started: its counters only
        self.caps = Capabilities(root_user=True, cgroup2_mount=fs.mount, controllers=("cpu", "memory"),
                                 sched_ext=True, sched_ext_state="disabled")


def real_stages(app):
    """The daemon's own stages (enforcer, detection, CPU scheduler, GPU) over the fake tree:
    with user-space event sources, a scripted sched_ext loader and a scripted NVML."""
    import asyncio
    from agentd.monitor.detect import DetectionHook
    from agentd.enforce.enforcer import ROOT, Enforcer
    from agentd.gpu.fake import FakeNvml
    from agentd.gpu.hook import GpuHook
    from agentd.gpu.nvml import Nvml
    from agentd.monitor.kernel_events import EventMonitor
    from agentd.sched.hook import CpuScheduler
    from tests.unit.test_gpu_hook import Forecasts, dev
    from tests.unit.test_sched import Clock, Loader

    enforcer = Enforcer(app, available_fn=lambda: 8 * GiB)
    detection = DetectionHook(app, monitor=EventMonitor(app.fs, mode="userspace"))
    sched = CpuScheduler(app, loader=Loader(), clock=Clock())
    nvml = FakeNvml({"devices": [dict(dev(80 * GiB, 5 * GiB), uuid="GPU-0")]})
    gpu = GpuHook(app, Nvml.open(nvml), Forecasts({"train.py": 4 * GiB}))
    from agentd.network.stage import EgressStage
    from tests.unit.network_fakes import FakeDevice, FakeEgress
    net = EgressStage(app, egress=FakeEgress(), device=FakeDevice)
    from agentd.reclaim import ReclaimStage
    reclaim = ReclaimStage(app, app.ctl.actuator, swap_free_fn=lambda: GiB)
    from agentd.disk.stage import IoStage
    disk = IoStage(app)
    stages = [enforcer, detection, sched, gpu, net, reclaim, disk]
    app.hooks += stages
    app.ctl.hooks = app.hooks

    async def start_sched():
        await sched.start()
        sched.task.cancel()
    asyncio.run(start_sched())
    enforcer._pressure(ROOT, time.monotonic(), "a PSI trigger fired")

    def detect(agent, argv):
        """What the detector does for a child of the agent that execs `argv`."""
        detection.on_agent_start(agent)
        known = detection.detector._agents[agent.agent_id]
        detection.detector._consider(known, 4300 + len(agent.tools), argv, True)

    async def gpu_call(agent):
        """A GPU tool call, placed; its process then holds 3 GiB on the GPU."""
        ticket = await app.ctl.pipeline.admit(agent, ["train.py"], "train", pid=4400)
        tool = app.ctl.start_tool(agent, 4400, ["train.py"], "train", ticket=ticket)
        app.procfs.cg_of[4400] = "/" + tool.cgroup
        nvml.script["devices"][0]["processes"] = [{"pid": 4400, "used": 3 * GiB}]
        gpu.refresh()
        return tool
    return stages, detect, gpu_call


def scrape(registry):
    """{exposed sample name: [(labels dict, value)]} parsed from the text exposition."""
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def metric_names(samples):
    names = set()
    for s in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", s)
        names.add(base if base in BY_NAME and BY_NAME[base].type == HISTOGRAM else s)
    return names


def drive(app):
    """One agent, a finished and a running tool call, an action, an admission, a reload."""
    ctl, fs = app.ctl, app.ctl.fs
    a = ctl.create_agent("ag", None)
    fs.write(a.cgroup, "memory.current", str(GiB))
    fs.write(a.cgroup, "memory.events", "low 0\nhigh 5\nmax 1\noom 0\noom_kill 0\n")
    fs.write(a.cgroup, "memory.pressure", "some avg10=1.00 avg60=0.00 avg300=0.00 total=2500000\n"
                                          "full avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n")
    for name in ("cpu.pressure", "io.pressure"):
        with open(fs.path(a.cgroup, name), "w") as f:
            f.write("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n")
    t = ctl.start_tool(a, 4242, ["pytest", "-q"])
    fs.write(t.cgroup, "memory.peak", str(600 * 2**20))
    fs.write(t.cgroup, "memory.events", "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n")
    t = a.tools[t.tool_id] = dataclasses.replace(t, forecast=type("F", (), {"peak_bytes": 400 * 2**20})())
    t.actions.append({"action": "queue", "reason": "memory budget", "seconds": 3.0, "forecast_bytes": 400 * 2**20})
    ctl.finish_tool(t, status={"exit": 0}, rusage={"wall_s": 2.0})
    ctl.start_tool(a, 4243, ["ls"])
    app.events.emit("action", agent="ag", tool="0001-batch", action="throttle",
                    reason="memory pressure: some avg10=40", after_trigger_s=0.004)
    app.events.emit("admission", agent="ag", tool_class="normal", wait_s=60.0, outcome="refused")
    app.events.emit("reload", ok=False, error="bad")
    return a


def test_catalog_file_is_generated_from_the_catalog():
    with open(CATALOG_MD) as f:
        assert f.read() == render_catalog(), "regenerate: python3 -m agentd.metrics.catalog > agentd/metrics/CATALOG.md"


def test_catalog_names_follow_the_conventions():
    for m in CATALOG:
        assert m.name.startswith("agentd_")
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        assert "tool" not in m.labels and "tool_id" not in m.labels, "no per-tool-call labels"
        assert "|" not in m.help + m.source, "a | would split the markdown table's row"
        assert not re.search(r"_(kb|mb|gb|ms|us|percent)\b", m.name), m.name
        if m.type == HISTOGRAM:
            # Negative buckets would make prometheus_client drop _sum and _count.
            assert list(m.buckets) == sorted(m.buckets) and m.buckets and m.buckets[0] >= 0
    assert len(BY_NAME) == len(CATALOG)


# Families no stage can fill over the fake tree: the BPF programs' own counters need the
# programs loaded (tests/host/test_metrics_series.py scrapes a real daemon that has them).
NEEDS_BPF = {"agentd_bpf_events_total"}


def test_real_stages_emit_only_documented_keys_and_plain_modes(tmp_path):
    """Every key a real stage's metric_stats() returns is one the collector reads, every
    documented key comes from some stage, and every mode is a plain word (a label value)."""
    app = App(tmp_path)
    stages, _, _ = real_stages(app)
    emitted = {}
    for h in stages:
        for k in h.metric_stats():
            emitted.setdefault(k, type(h).__name__)
        for comp, mode in h.modes().items():
            assert isinstance(mode, str) and len(mode) < 200, (type(h).__name__, comp, mode)
    assert set(emitted) <= set(STATS_KEYS), {k: v for k, v in emitted.items() if k not in STATS_KEYS}
    assert set(STATS_KEYS) <= set(emitted), set(STATS_KEYS) - set(emitted)


def test_collector_emits_exactly_the_catalog(tmp_path):
    app = App(tmp_path)
    _, detect, gpu_call = real_stages(app)
    registry, _ = build_registry(app)
    a = drive(app)
    app.server.counts.count_refusal("per_uid")
    app.events.write_errors = 2
    detect(a, ["sh", "-c", "make -j4"])
    asyncio.run(gpu_call(a))
    net = next(h for h in app.hooks if type(h).__name__ == "EgressStage")
    (entry,) = net.egress.entries.values()          # the agent's: its class has a rate
    entry.update(bytes=5000, packets=4, delayed=3, drops=1)
    app.ctl.fs.write(a.cgroup, "io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    s = scrape(registry)
    assert metric_names(s) == set(BY_NAME) - NEEDS_BPF

    def one(name, **labels):
        vals = [v for lab, v in s[name] if all(lab.get(k) == x for k, x in labels.items())]
        assert len(vals) == 1, (name, labels, s.get(name))
        return vals[0]

    assert one("agentd_agents_running") == 1
    assert one("agentd_api_connections_refused_total", reason="per_uid") == 1
    assert one("agentd_event_log_write_errors_total") == 2
    assert one("agentd_agent_memory_bytes", agent="ag", agent_class="normal") == GiB
    assert one("agentd_agent_memory_high_bytes", agent="ag") == 3 * GiB
    assert one("agentd_agent_memory_max_bytes", agent="ag") == 4 * GiB
    assert one("agentd_agent_memory_events_total", agent="ag", event="high") == 5
    assert one("agentd_agent_pressure_memory_waiting_seconds_total", agent="ag") == 2.5
    assert one("agentd_agent_pressure_memory_stalled_seconds_total", agent="ag") == 0.5
    assert one("agentd_agent_pressure_io_stalled_seconds_total", agent="ag") == 0.25
    assert one("agentd_tool_calls_running", tool_class="normal") == 2     # ls, and the detected make
    assert one("agentd_tool_calls_running", tool_class="train") == 1
    assert one("agentd_tool_calls_finished_total", tool_class="batch", outcome="ok") == 1
    assert one("agentd_tool_call_memory_events_total", tool_class="batch", event="high") == 3
    # 600 MiB falls in the 1 GiB bucket, not the 512 MiB one.
    assert one("agentd_tool_call_memory_peak_bytes_bucket", tool_class="batch", le=repr(float(2**29))) == 0
    assert one("agentd_tool_call_memory_peak_bytes_bucket", tool_class="batch", le=repr(float(2**30))) == 1
    assert one("agentd_forecast_peak_ratio_sum", tool_class="batch") == pytest.approx(1.5)
    assert one("agentd_forecast_error_bytes_sum", tool_class="batch") == 200 * 2**20
    assert one("agentd_enforcement_actions_total", action="throttle", reason="memory_pressure") == 1
    assert one("agentd_enforcement_reaction_seconds_count", action="throttle") == 1
    assert one("agentd_admission_wait_seconds_sum", tool_class="batch", outcome="admitted") == 3.0
    assert one("agentd_admission_wait_seconds_count", tool_class="normal", outcome="refused") == 1
    assert one("agentd_policy_reloads_total", outcome="failed") == 1
    # From the real stages:
    assert one("agentd_admission_waiting") == 0
    assert one("agentd_pressure_events_total") == 1
    assert one("agentd_pressure_own_stall_total") == 0
    assert one("agentd_autodetect_total", event="placed") == 1
    assert one("agentd_bpf_programs_loaded", program="lifecycle") == 0
    assert one("agentd_bpf_programs_loaded", program="memwatch") == 0
    assert one("agentd_mode_info", component="detection", mode="poll") == 1
    assert one("agentd_mode_info", component="cpu", mode="sched_ext") == 1
    assert one("agentd_mode_info", component="enforce", mode="on") == 1
    assert one("agentd_cpu_scheduler_mode", mode="sched_ext") == 1
    assert one("agentd_sched_ext_ejections_total") == 0
    assert one("agentd_gpu_placements_total", outcome="gpu") == 1
    assert one("agentd_gpu_memory_total_bytes", gpu="0") == 80 * GiB
    assert one("agentd_agent_gpu_memory_bytes", agent="ag", gpu="0") == 3 * GiB
    assert one("agentd_gpu_waiting") == 0 and one("agentd_gpu_queued_total") == 0
    assert one("agentd_network_egress_bytes_total", agent="ag") == 5000
    assert one("agentd_network_egress_delayed_packets_total", agent="ag") == 3
    assert one("agentd_network_egress_drops_total", agent="ag") == 1
    assert one("agentd_mode_info", component="network", mode="fq") == 1
    assert one("agentd_agent_io_written_bytes_total", agent="ag") == 8192
    assert one("agentd_agent_io_reads_total", agent="ag") == 1


def test_missing_or_failing_stages_omit_samples_not_the_scrape(tmp_path):
    app = App(tmp_path, hooks=[Broken()])
    registry, _ = build_registry(app)
    a = drive(app)
    # The agent's cgroup vanishes between the controller's view and the read.
    app.ctl.fs.remove_tree(a.cgroup)
    s = scrape(registry)
    assert s["agentd_agents_running"][0][1] == 1
    assert "agentd_agent_memory_bytes" not in s
    assert not any(n.startswith(("agentd_gpu", "agentd_bpf", "agentd_admission_waiting")) for n in s)
    assert "agentd_tool_calls_finished_total" in s


def test_reason_labels_are_bounded():
    known = set()
    assert normalise_reason("memory pressure: some avg10=40.1", known) == "memory_pressure"
    assert normalise_reason("API", known) == "api"
    assert normalise_reason(None, known) == "none"
    for i in range(100):
        normalise_reason(f"reason {i}", known)
    assert len(known) == MAX_REASONS and normalise_reason("brand new", known) == "other"


def test_tally_ignores_malformed_events():
    t = EventTally()
    t.on_event({"event": "tool_end", "tool_class": "x", "memory_peak_bytes": "lots", "wall_s": 1})
    t.on_event({"event": "admission", "wait_s": "soon"})
    t.on_event({"event": "something_new"})
    counters, hists = t.snapshot()
    assert counters == {} and hists["agentd_admission_wait_seconds"] == {}


def test_parse_listen():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:1") == ("::1", 1)
    with pytest.raises(PolicyError):
        parse_listen("localhost")


def test_sample_log_skips_flat_points(tmp_path):
    app = App(tmp_path)
    seen = []
    app.events.subscribe(seen.append)
    a = app.ctl.create_agent("ag", None)
    t = app.ctl.start_tool(a, 4242, ["pytest"])
    log = SampleLog(app, min_change=0.05, max_gap_s=10)
    fs = app.ctl.fs
    for now, val in ((0, 100 * 2**20), (1, 102 * 2**20), (2, 200 * 2**20), (13, 200 * 2**20)):
        fs.write(t.cgroup, "memory.current", str(val))
        log.tick(now)
    samples = [(e["memory_bytes"]) for e in seen if e["event"] == "sample"]
    # 102 MiB is within 5% of 100 MiB and only 1 s later: skipped; 13 s is past max_gap_s: kept.
    assert samples == [100 * 2**20, 200 * 2**20, 200 * 2**20]
    app.ctl.finish_tool(t, status={"exit": 0})
    log.tick(14)
    assert log._last == {}
