"""The metrics catalog, the collector over a fake cgroup tree, the event tally, the sample log."""

import os
import re

import pytest
from prometheus_client import generate_latest

from agentd.controller import Controller
from agentd.eventlog import EventLog
from agentd.kernel.fakes import FakeCgroupFS
from agentd.metrics import build_registry, parse_listen
from agentd.metrics.catalog import BY_NAME, CATALOG, HISTOGRAM, render_catalog
from agentd.metrics.samples import SampleLog
from agentd.metrics.tally import MAX_REASONS, EventTally, normalise_reason
from agentd.planner import Planner
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore
from agentd.errors import PolicyError

GiB = 2**30
HERE = os.path.dirname(os.path.abspath(__file__))
CATALOG_MD = os.path.join(HERE, "..", "..", "agentd", "metrics", "CATALOG.md")

POLICY = """
version: 1
agent_classes:
  normal: {priority: 50, memory: {high: 3Gi, max: 4Gi}}
tool_classes:
  normal: {priority: 50}
  batch: {priority: 20, memory: {max: 1Gi}}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
"""


class Proc:
    def cgroup(self, pid):
        return "/"

    oom = {}

    def set_oom_score_adj(self, pid, value):
        self.oom[pid] = value


class Stage:
    """A stand-in for the enforcer/monitor/scheduler/GPU stages: every documented key."""

    def __init__(self, fail=False):
        self.fail = fail

    def modes(self):
        return {"pressure": "psi-trigger"}

    def metric_stats(self):
        if self.fail:
            raise RuntimeError("stage broke")
        return {"admission_waiting": 2, "pressure_events": 7, "pressure_own_stall": 3,
                "bpf_programs": {"lifecycle": True, "memwatch": False},
                "bpf_events": {"lifecycle": {"lost": 0, "stopped": 3}},
                "autodetect": {"placed": 4, "errors": 0}, "cpu_scheduler": "sched_ext",
                "sched_ext_ejections": 1,
                "gpus": [{"gpu": "0", "memory_used_bytes": 5 * GiB, "memory_total_bytes": 80 * GiB,
                          "utilization_ratio": 0.25}],
                "agent_gpu_memory": {("ag", "0"): GiB}, "gpu_unattributed_bytes": 0,
                "gpu_placements": {"placed": 3, "no_room": 1}, "gpu_budget_actions": {"notify": 1, "kill": 0},
                "gpu_waiting": 0, "gpu_queued_total": 1, "gpu_wait_seconds_total": 2.5}


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
    t.forecast = type("F", (), {"peak_bytes": 400 * 2**20})()
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


def test_collector_emits_exactly_the_catalog(tmp_path):
    app = App(tmp_path, hooks=[Stage()])
    registry, _ = build_registry(app)
    drive(app)
    s = scrape(registry)
    assert metric_names(s) == set(BY_NAME)

    def one(name, **labels):
        vals = [v for lab, v in s[name] if all(lab.get(k) == x for k, x in labels.items())]
        assert len(vals) == 1, (name, labels, s.get(name))
        return vals[0]

    assert one("agentd_agents_running") == 1
    assert one("agentd_agent_memory_bytes", agent="ag", agent_class="normal") == GiB
    assert one("agentd_agent_memory_high_bytes", agent="ag") == 3 * GiB
    assert one("agentd_agent_memory_max_bytes", agent="ag") == 4 * GiB
    assert one("agentd_agent_memory_events_total", agent="ag", event="high") == 5
    assert one("agentd_agent_pressure_memory_waiting_seconds_total", agent="ag") == 2.5
    assert one("agentd_agent_pressure_memory_stalled_seconds_total", agent="ag") == 0.5
    assert one("agentd_agent_pressure_io_stalled_seconds_total", agent="ag") == 0.25
    assert one("agentd_tool_calls_running", tool_class="normal") == 1
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
    assert one("agentd_admission_waiting") == 2
    assert one("agentd_gpu_placements_total", outcome="no_room") == 1
    assert one("agentd_gpu_wait_seconds_total") == 2.5
    assert one("agentd_policy_reloads_total", outcome="failed") == 1
    assert one("agentd_mode_info", component="pressure", mode="psi-trigger") == 1
    assert one("agentd_bpf_programs_loaded", program="memwatch") == 0
    assert one("agentd_cpu_scheduler_mode", mode="sched_ext") == 1
    assert one("agentd_gpu_utilization_ratio", gpu="0") == 0.25


def test_missing_or_failing_stages_omit_samples_not_the_scrape(tmp_path):
    app = App(tmp_path, hooks=[Stage(fail=True)])
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
