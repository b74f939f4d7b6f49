"""A dry run over a fake cgroup tree: every would-be write is decided, logged and emitted,
none is written; detection observes without stopping or moving; the what-if report reads
the decisions back from the event log (pure, with literals)."""

import json

import pytest

from agentd.controller import Controller
from agentd.enforce.actuator import Actuator
from agentd.eventlog import EventLog
from agentd.kernel import bpf_types as T
from agentd.kernel.fakes import FakeCgroupFS
from agentd.monitor.autodetect import AutoDetector
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore
from agentd.ui import whatif

GiB, MiB = 2**30, 2**20

POLICY = """
version: 1
agent_classes:
  normal: {priority: 50, memory: {max: 4Gi}, cpu: {weight: 300}, pids: {max: 100}}
tool_classes:
  normal: {priority: 50}
  batch: {priority: 20, memory: {max: 1Gi}, cpu: {weight: 50}, stragglers: kill, straggler_grace_s: 0}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
"""


class Proc:
    def __init__(self):
        self.written = {}

    def cgroup(self, pid):
        return "/"

    def oom_score_adj(self, pid):
        return 0

    def set_oom_score_adj(self, pid, value):
        self.written[pid] = value


@pytest.fixture
def dry(tmp_path):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    events = EventLog(str(tmp_path / "ev.jsonl"))
    proc = Proc()
    policy = load_policy_text(POLICY, "t.yaml", host_memory_bytes=16 * GiB)
    ctl = Controller(fs, "agentd", None, Planner(policy, 16 * GiB), StateStore(str(tmp_path / "st")), events,
                     proc, actuator=Actuator(fs, events, dry_run=True, procfs=proc))
    ctl.setup()
    ctl.log_path = str(tmp_path / "ev.jsonl")
    return ctl


def _events(ctl):
    with open(ctl.log_path) as f:
        return [json.loads(line) for line in f]


LIMIT_FILES = ("memory.min", "memory.low", "memory.high", "memory.max", "cpu.weight", "cpu.max", "pids.max",
               "memory.oom.group", "cgroup.freeze", "cgroup.kill")


def test_a_dry_run_writes_no_limit_oom_score_adj_or_kill_and_emits_each_decision(dry):
    a = dry.create_agent("ag", None)
    dry.place_main(a, 4242)
    t = dry.start_tool(a, 4343, ["pytest", "-q"])
    # Placement is real (the call has its cgroup and its pid); nothing else was written.
    assert ("agentd/agents/ag/tools/" + t.tool_id, "cgroup.procs", "4343") in dry.fs.writes
    assert not [w for w in dry.fs.writes if w[1] in LIMIT_FILES], dry.fs.writes
    assert dry.fs.read(t.cgroup, "memory.max").strip() == "max"
    assert dry.procfs.written == {}
    # What it would have set is what status shows, and the actuator reads it back.
    assert t.limits_applied["memory.max"] == str(GiB) and t.limits_applied["cpu.weight"] == "50"
    assert dry.actuator.read(t.cgroup, "memory.max") == str(GiB)
    ev = _events(dry)
    start = next(e for e in ev if e["event"] == "tool_start")
    assert start["dry_run"] is True and start["limits"]["memory.max"] == str(GiB)
    would = [e for e in ev if e["event"] == "dry_run"]
    assert {"agent": "ag", "tool": None} == {k: would[0][k] for k in ("agent", "tool")}
    assert would[0]["changes"]["memory.max"] == ["max", str(4 * GiB)]
    adj = [e for e in would if "oom_score_adj" in e.get("changes", {})]
    assert [(e["tool"], e["pid"]) for e in adj] == [(None, 4242), (t.tool_id, 4343)]
    assert adj[0]["changes"]["oom_score_adj"][1] < 0 < adj[1]["changes"]["oom_score_adj"][1]
    # The straggler kill the class asks for is decided, not done: the cgroup stays for the sweep.
    dry.fs.write(t.cgroup, "cgroup.events", "populated 1\nfrozen 0\n")      # a straggler runs on
    res = dry.finish_tool(t, status={"exit": 0})
    assert res["cgroup_removed"] is False
    assert not [w for w in dry.fs.writes if w[1] == "cgroup.kill"]
    kill = [e for e in _events(dry) if e["event"] == "dry_run" and e["what"] == "kill"]
    assert kill and kill[0]["tool"] == t.tool_id
    # The launcher is told no oom_score_adj to write for itself.
    t2 = dry.start_tool(a, None, ["ls"])
    assert dry.launcher_oom_adj(a, t2) == ""


def test_a_dry_run_agent_with_leftovers_is_kept_until_they_are_gone(dry):
    a = dry.create_agent("ag", None)
    dry.fs.write(a.cgroup, "cgroup.events", "populated 1\nfrozen 0\n")      # a leftover runs on
    dry.remove_agent(a, kill=True, reason="agent exited")
    assert not [w for w in dry.fs.writes if w[1] == "cgroup.kill"]
    assert a.detached and "ag" in dry.agents


def test_would_be_values_are_the_base_of_the_next_decision(tmp_path):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    fs.mkdir("t")
    got = []
    act = Actuator(fs, type("E", (), {"emit": lambda self, kind, **f: got.append((kind, f))})(), dry_run=True)
    assert act.set_high("tool a/t", "t", 512 * MiB, "forecast", agent="a", tool="t") == ("max", str(512 * MiB))
    assert act.set_high("tool a/t", "t", 768 * MiB, "re-forecast", agent="a", tool="t") == \
        (str(512 * MiB), str(768 * MiB))
    assert act.read_high("t") == 768 * MiB and fs.read("t", "memory.high").strip() == "max"
    assert [f["changes"]["memory.high"] for _, f in got] == [["max", str(512 * MiB)], [str(512 * MiB), str(768 * MiB)]]
    act.forget("t")
    assert act.read_high("t") is None        # "max" again: the file was never written


class Lifecycle:
    def __init__(self):
        self.flags = {}

    def watch(self, cgid, flags=0):
        self.flags[cgid] = flags

    def unwatch(self, cgid):
        self.flags.pop(cgid, None)


class Cgroups:
    def __init__(self):
        self.moves = []

    def cgroup_id(self, cg):
        return 7

    def move(self, cg, pid):
        self.moves.append((cg, pid))

    def procs(self, cg):
        return []


def _exec(pid, ppid, argv):
    from agentd.monitor.events import ProcEvent, ProcKind
    return ProcEvent(kind=ProcKind.EXEC, pid=pid, ppid=ppid, cgroup_id=7, watched_id=7, ts_ns=0, sid=pid,
                     flags=T.AGENTD_PF_MAIN | T.AGENTD_PF_PARENT_MAIN, argv=tuple(argv))


def test_observe_only_detection_stops_nothing_moves_nothing_and_reports_each_call_once():
    from agentd.monitor.events import ProcEvent, ProcKind
    seen, resumed, lc, cgs = [], [], Lifecycle(), Cgroups()
    det = AutoDetector(lambda agent, pid, argv: seen.append((agent, pid, argv)), lambda argv, s: True, cgs,
                       strategy="stop", lifecycle=lc, resume=resumed.append, observe=True)
    det.add_agent("ag", "r/agents/ag/main")
    assert not lc.flags[7] & T.AGENTD_WATCH_STOP_EXEC and lc.flags[7] & T.AGENTD_WATCH_MAIN
    assert det.mode == "bpf-observe"
    det.handle(_exec(100, 1, ["bash", "-c", "pytest"]))
    det.handle(_exec(100, 1, ["pytest"]))                       # bash exec'd in place: the same call
    det.handle(ProcEvent(kind=ProcKind.FORK, pid=101, ppid=100, cgroup_id=7, watched_id=7, ts_ns=0))
    assert seen == [("ag", 100, ["bash", "-c", "pytest"])]
    assert cgs.moves == [] and resumed == []
    # The non-dry detector stops at exec.
    lc2 = Lifecycle()
    AutoDetector(lambda *a: None, lambda *a: True, cgs, strategy="stop", lifecycle=lc2).add_agent("b", "m")
    assert lc2.flags[7] & T.AGENTD_WATCH_STOP_EXEC


EVENTS = [
    {"ts": 100.0, "event": "agent_start", "agent": "ag", "agent_class": "normal", "limits": {"memory.max": "4096"},
     "dry_run": True},
    {"ts": 100.1, "event": "dry_run", "agent": "ag", "tool": None, "what": "set", "reason": "OOM order, pid 9",
     "pid": 9, "changes": {"oom_score_adj": [0, -800]}},
    {"ts": 101.0, "event": "tool_start", "agent": "ag", "tool": "0001-batch", "argv": ["pytest", "-q"],
     "tool_class": "batch", "rule": "tests", "origin": "launcher", "limits": {"memory.max": "1024",
                                                                            "memory.high": "512"}, "dry_run": True},
    {"ts": 101.0, "event": "dry_run", "agent": "ag", "tool": "0001-batch", "what": "set", "reason": "OOM order",
     "pid": 10, "changes": {"oom_score_adj": [0, 700]}},
    {"ts": 102.0, "event": "dry_run", "agent": "ag", "tool": "0001-batch", "what": "set", "reason": "re-forecast",
     "changes": {"memory.high": ["512", "768"]}},
    {"ts": 103.0, "event": "action", "agent": "ag", "tool": "0001-batch", "action": "throttle", "old": "768",
     "new": "300", "reason": "memory is short", "dry_run": True},
    {"ts": 103.5, "event": "action", "agent": "other", "tool": "0001-x", "action": "freeze", "reason": "real"},
    {"ts": 103.6, "event": "dry_run", "agent": "ag", "tool": "0001-batch", "what": "hide the GPUs (device program)",
     "reason": "placed on the CPU"},
    {"ts": 104.0, "event": "tool_end", "agent": "ag", "tool": "0001-batch", "outcome": "ok",
     "memory_peak_bytes": 900, "forecast_bytes": 400,
     "actions": [{"action": "queue", "ts": 100.9, "seconds": 0.0, "forecast_bytes": 400, "reason": "memory budget",
                  "dry_run": True}]},
    {"ts": 105.0, "event": "tool_observed", "agent": "ag", "tool": "0002-normal", "pid": 11,
     "argv": ["bash", "-c", "ls"], "tool_class": "normal", "rule": None, "origin": "auto",
     "limits": {"memory.max": "max"}, "oom_score_adj": 500, "forecast_bytes": 64, "dry_run": True},
]


def test_what_if_lists_per_call_the_limits_steps_and_waits_of_a_dry_run():
    agents, calls = whatif.what_if(EVENTS)
    assert list(agents) == ["ag"] and agents["ag"].oom_score_adj == -800
    assert [c.tool for c in calls] == ["0001-batch", "0002-normal"]        # not the real freeze of `other`
    b, o = calls
    assert b.limits == {"memory.max": "1024", "memory.high": "768"} and b.oom_score_adj == 700
    assert [a["action"] for a in b.actions] == ["set memory.high", "throttle", "hide the GPUs (device program)"]
    assert b.waits == [{"ts": 100.9, "seconds": 0.0, "forecast_bytes": 400, "reason": "memory budget"}]
    assert (b.outcome, b.peak, b.forecast) == ("ok", 900, 400)
    assert o.observed and o.oom_score_adj == 500 and o.forecast == 64
    lines = whatif.text(agents, calls)
    assert "2 tool calls" in lines[0] and "3 enforcement steps" in lines[0] and "1 admission waits" in lines[0]
    assert any("would throttle" in line and "+2.0 s" in line for line in lines)
    assert any("observed only" in line for line in lines)
    doc = whatif.as_json(agents, calls)
    assert doc["dry_run"] and doc["tool_calls"][0]["waits"][0]["forecast_bytes"] == 400
    assert whatif.what_if(EVENTS, agent="nobody") == ({}, [])


def test_what_if_of_a_log_without_a_dry_run_says_how_to_get_one(tmp_path):
    from agentd.errors import AgentdError
    p = tmp_path / "ev.jsonl"
    p.write_text("\n".join(json.dumps(e) for e in EVENTS if not e.get("dry_run") and e["event"] != "dry_run") + "\n")
    with pytest.raises(AgentdError, match="--dry-run"):
        whatif.load(str(p))
