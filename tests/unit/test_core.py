"""Unit tests of the foundation's pure parts and of limit writes on a fake cgroup tree."""

import os

import pytest

from agentd.api import protocol
from agentd.controller import Controller
from agentd.errors import AgentdError, RequestError
from agentd.eventlog import EventLog
from agentd.api.feedback import messages_for
from agentd.kernel.fakes import FakeCgroupFS
from agentd.names import check_name
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy_text
from agentd.state import StateStore
from agentd.units import format_size, parse_cpu, parse_size

GiB = 2**30


@pytest.mark.parametrize("text,want", [
    ("2Gi", 2 * GiB), ("512M", 512 * 10**6), ("1.5G", int(1.5 * 10**9)), (1024, 1024), ("max", None),
    ("25%", GiB // 4), ("100Ki", 102400),
])
def test_parse_size(text, want):
    assert parse_size(text, total=GiB) == want


@pytest.mark.parametrize("bad", ["2Gx", "-1", "abc", "0%", "150%", True])
def test_parse_size_rejects(bad):
    with pytest.raises(AgentdError):
        parse_size(bad, total=GiB)


def test_parse_cpu_and_format():
    assert parse_cpu("150%") == 1.5 and parse_cpu(2) == 2.0 and parse_cpu("max") is None
    assert format_size(3 * GiB // 2) == "1.5 GiB" and format_size(None) == "max"


@pytest.mark.parametrize("name", ["a", "agent-1", "A.b_c", "x" * 63])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "/", "a/b", "..", "a..b", ".hidden", "-x", "a\0b", "x" * 64, "a b",
                                  "cgroup.procs", "memory.max", 5, None])
def test_bad_names(name):
    with pytest.raises(RequestError) as e:
        check_name(name)
    assert e.value.code == "bad_name"


def test_protocol_roundtrip_and_errors():
    req = protocol.parse_request(b'{"v":1,"op":"tool_start","pid":5,"argv":["pytest","-q"],"class":"batch"}\n')
    assert req["argv"] == ["pytest", "-q"]
    assert protocol.ok(tool="0001-x").endswith(b"\n")
    for raw, code in [(b"{", "bad_json"), (b'{"v":1,"op":"status","agent":"../x"}', "bad_name"),
                      (b'{"v":1,"op":"tool_done","agent":"a","tool":"t","status":{"exit":1,"signal":2}}', "bad_field")]:
        with pytest.raises(RequestError) as e:
            protocol.parse_request(raw)
        assert e.value.code == code


POLICY = """
version: 1
agent_classes:
  normal: {priority: 50, memory: {high: 3Gi, max: 4Gi}, cpu: {weight: 300, max: "150%"}, pids: {max: 100}}
tool_classes:
  normal: {priority: 50}
  batch: {priority: 20, memory: {max: 1Gi}, cpu: {weight: 50}}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
"""


@pytest.fixture
def ctl(tmp_path):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    policy = load_policy_text(POLICY, "t.yaml", host_memory_bytes=16 * GiB)

    class Proc:
        def cgroup(self, pid):
            return "/"

        oom = {}

        def set_oom_score_adj(self, pid, value):
            self.oom[pid] = value

    c = Controller(fs, "agentd", None, Planner(policy, 16 * GiB), StateStore(str(tmp_path / "st")),
                   EventLog(str(tmp_path / "ev.jsonl")), Proc())
    c.setup()
    return c


def test_agent_limits_written(ctl):
    a = ctl.create_agent("ag", None)
    fs = ctl.fs
    assert fs.read(a.cgroup, "memory.max") == str(4 * GiB)
    assert fs.read(a.cgroup, "memory.high") == str(3 * GiB)
    assert fs.read(a.cgroup, "cpu.weight") == "300"
    assert fs.read(a.cgroup, "cpu.max") == "150000 100000"
    assert fs.read(a.cgroup, "pids.max") == "100"
    assert "memory" in fs.read(a.cgroup, "cgroup.subtree_control")
    with pytest.raises(RequestError):
        ctl.create_agent("ag", None)          # duplicate name


def test_tool_limits_by_rule_and_cleanup(ctl, tmp_path):
    a = ctl.create_agent("ag", None)
    t = ctl.start_tool(a, 4242, ["bash", "-c", "cd x && pytest -q"])
    assert t.tool_id == "0001-batch" and t.plan.rule == "tests"
    assert ctl.fs.read(t.cgroup, "memory.max") == str(GiB)
    assert ctl.fs.read(t.cgroup, "cpu.weight") == "50"
    assert ctl.fs.read(t.cgroup, "cgroup.procs").split() == ["4242"]
    # A tool call declared with an unknown class is refused, nothing created.
    with pytest.raises(RequestError):
        ctl.start_tool(a, 4243, ["x"], declared_class="nope")
    assert ctl.fs.children(a.tools_cgroup) == ["0001-batch"]
    res = ctl.finish_tool(t, status={"exit": 0})
    assert res["outcome"] == "ok" and res["limits"]["memory.max"] == str(GiB)
    assert ctl.fs.children(a.tools_cgroup) == []
    state = StateStore(str(tmp_path / "st")).load()
    assert list(state["agents"]) == ["ag"] and state["tools"] == {}


def test_feedback_sentences():
    base = {"argv": ["bash", "-c", "cd repo && pytest -q"], "limits": {"memory.max": str(2 * GiB)},
            "forecast_bytes": int(1.1 * GiB), "actions": []}
    [m] = messages_for(dict(base, outcome="oom_killed"))
    assert m.startswith("[agentd] pytest was killed: it reached its 2.0 GiB limit (forecast 1.1 GiB)")
    assert "subset of the tests" in m
    assert messages_for(dict(base, outcome="ok")) == []


def test_unknown_yaml_tag_is_a_policy_error():
    """Found by bench/reliability.py's fuzzer: a bare unknown tag crashed the loader."""
    from agentd.errors import PolicyError
    with pytest.raises(PolicyError) as e:
        load_policy_text("!@", "x.yaml")
    assert str(e.value).startswith("x.yaml:1: YAML syntax error: could not determine a constructor")


def test_memory_oom_group_is_set_on_each_call_but_not_reported_as_a_limit(ctl, tmp_path, caplog):
    """memory.oom.group decides what an OOM kill takes (the whole call), it limits
    nothing: status, events and the limit log lines list only limits."""
    import json
    a = ctl.create_agent("ag", None)
    with caplog.at_level("INFO", logger="agentd.controller"):
        t = ctl.start_tool(a, 4242, ["bash", "-c", "cd x && pytest -q"])
    assert ctl.fs.read(t.cgroup, "memory.oom.group") == "1"
    assert "memory.oom.group" not in t.limits_applied and t.limits_applied["memory.max"] == str(GiB)
    assert not [r for r in caplog.records if "memory.oom.group" in r.getMessage()]
    res = ctl.finish_tool(t, status={"exit": 0})
    assert "memory.oom.group" not in res["limits"]
    events = [json.loads(line) for line in open(tmp_path / "ev.jsonl")]
    assert all("memory.oom.group" not in (e.get("limits") or {}) for e in events)


def test_a_tool_calls_limits_are_written_once_each_and_logged_in_one_line(ctl, caplog, monkeypatch):
    """The per-call path: one write per limit file into the fresh cgroup (no stat, no read
    back), a file the kernel does not offer there skipped, and one log line for all."""
    a = ctl.create_agent("ag", None)
    # The kernel offers no pids controller below this agent: tool cgroups lack pids.max.
    populate = ctl.fs._populate

    def without_pids(path):
        populate(path)
        if "/tools/" in path:
            os.unlink(os.path.join(path, "pids.max"))
    monkeypatch.setattr(ctl.fs, "_populate", without_pids)
    reads = []
    real_read = ctl.fs.read
    monkeypatch.setattr(ctl.fs, "read", lambda cg, name: reads.append(name) or real_read(cg, name))
    before = len(ctl.fs.writes)
    with caplog.at_level("INFO", logger="agentd"):        # the actuator logs every limit write
        t = ctl.start_tool(a, None, ["bash", "-c", "cd x && pytest -q"])
    written = [w[1] for w in ctl.fs.writes[before:] if w[0] == t.cgroup]
    assert sorted(written) == sorted(set(written))            # each file once
    assert "pids.max" not in written and "pids.max" not in t.limits_applied
    assert t.limits_applied["memory.max"] == str(GiB)
    assert not [r for r in reads if r in t.limits_applied]    # nothing read back
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"tool {t.key}:")]
    assert len(lines) == 1 and f"memory.max={GiB}" in lines[0]


def test_the_event_log_stays_open_and_follows_a_rotation(tmp_path, monkeypatch):
    import json
    from agentd import eventlog
    monkeypatch.setattr(eventlog, "REOPEN_CHECK_S", 0.0)
    path = tmp_path / "ev.jsonl"
    log = eventlog.EventLog(str(path))
    log.emit("one")
    fd = log._fd
    log.emit("two")
    assert log._fd == fd                                      # not opened again per event
    path.rename(tmp_path / "ev.jsonl.1")                       # logrotate
    log.emit("three")
    assert [json.loads(x)["event"] for x in open(tmp_path / "ev.jsonl.1")] == ["one", "two"]
    assert [json.loads(x)["event"] for x in open(path)] == ["three"]
    log.close()


def test_a_planner_answers_a_repeated_command_from_memory_with_a_plan_of_its_own(ctl, monkeypatch):
    """Admission and placement plan each call twice: the rule match is done once, and each
    plan's limits stay its own (the forecaster edits them)."""
    from agentd.policy import planner as planner_mod
    calls = []
    real = planner_mod.classify_tool
    monkeypatch.setattr(planner_mod, "classify_tool", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    a = ctl.create_agent("ag", None)
    argv = ["bash", "-c", "cd x && pytest -q"]
    p1 = ctl.planner.plan_tool(a, argv)
    p1.limits["memory.high"] = "1"
    p2 = ctl.planner.plan_tool(a, list(argv))
    assert len(calls) == 1
    assert p2.limits["memory.high"] != "1" and p2.tool_class == p1.tool_class and p2.rule == p1.rule
    ctl.planner.plan_tool(a, argv, mem="512Mi")
    assert len(calls) == 2                                    # --mem is part of the question
