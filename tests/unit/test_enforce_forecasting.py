"""The enforcer's history handling: a usable store learns, an unusable one costs one
warning and forecasts fall back to class priors; the dry-run actuator writes nothing."""

import logging
import types

from agentd.api.outbox import Outbox
from agentd.enforce.actuator import Actuator, notice_text
from agentd.enforce.forecasting import Forecasting
from agentd.forecast import HistoryStore
from agentd.model import ToolCall, ToolPlan
from agentd.policy.loader import load_policy_text

GiB = 1 << 30
MiB = 1 << 20


def policy():
    return load_policy_text("version: 1\n", host_memory_bytes=8 * GiB)


def tool(argv, key="0001-batch", cls="batch"):
    return ToolCall(agent_id="a", tool_id=key, cgroup=f"x/{key}", argv=argv,
                    plan=ToolPlan(tool_class=cls, priority=20, limits={}))


def result(peak):
    return {"memory_peak_bytes": peak, "wall_s": 1.0, "cpu_s": 0.5, "status": {"exit": 0}, "outcome": "ok"}


def test_history_in_state_dir_learns_across_instances(tmp_path):
    f = Forecasting(policy(), str(tmp_path), 8 * GiB)
    assert f.mode == str(tmp_path / "history.sqlite")
    cold = f.forecast(["pytest", "-x"], "batch", "a", "normal")
    assert cold.confidence == 0
    agent = types.SimpleNamespace(agent_class="normal")
    for _ in range(6):
        f.record(tool(["pytest", "-x"]), agent, result(300 * MiB))
    f.close()
    g = Forecasting(policy(), str(tmp_path), 8 * GiB)
    warm = g.forecast(["pytest", "-x"], "batch", "a", "normal")
    assert warm.confidence > 0 and warm.peak_bytes < cold.peak_bytes
    g.close()


def test_killed_and_throttled_calls_are_recorded_as_lower_bounds(tmp_path):
    f = Forecasting(policy(), str(tmp_path), 8 * GiB)
    agent = types.SimpleNamespace(agent_class="normal")
    done = tool(["pytest", "-x"])
    f.record(done, agent, result(300 * MiB))
    throttled = tool(["pytest", "-x"], key="0002-batch")
    throttled.actions.extend([{"action": "throttle"}, {"action": "restore"}])
    f.record(throttled, agent, result(200 * MiB))
    killed = tool(["pytest", "-x"], key="0003-batch")
    f.record(killed, agent, dict(result(500 * MiB), outcome="oom_killed", memory_events={"oom_kill": 1}))
    assert [(r.peak_bytes, r.censored) for r in f.store.records()] == \
        [(500 * MiB, True), (200 * MiB, True), (300 * MiB, False)]
    f.close()


def test_unwritable_state_dir_warns_once_and_uses_priors(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="agentd.enforce"):
        f = Forecasting(policy(), str(blocker / "state"), 8 * GiB)
        f.record(tool(["make"]), None, result(10 * MiB))
        fc = f.forecast(["make"], "batch", "a", "normal")
    assert f.mode == "off"
    assert fc.peak_bytes > 0 and fc.source.startswith("prior")
    assert sum("history disabled" in r.message for r in caplog.records) == 1


def test_full_history_warns_once_then_runs_without(tmp_path, caplog):
    f = Forecasting(policy(), "", 8 * GiB)
    assert f.mode == ":memory:"
    # A store capped just above its empty size: a call with a long argv fills it, as a
    # full disk would ("database or disk is full").
    full = HistoryStore(":memory:", max_bytes=64 * 1024)
    f.store = f.forecaster.store = full
    agent = types.SimpleNamespace(agent_class="normal")
    argv = ["make", "-j8"] + ["x" * 4000] * 60
    with caplog.at_level(logging.WARNING, logger="agentd.enforce"):
        for _ in range(3):
            f.record(tool(argv), agent, result(50 * MiB))
    assert f.mode == "off"
    assert sum("history disabled" in r.message for r in caplog.records) == 1
    assert f.forecast(["make", "-j8"], "batch", "a", "normal").source.startswith("prior")


class RecordingFS:
    def __init__(self):
        self.files = {("x/0001-batch", "memory.high"): "max\n", ("x/0001-batch", "cgroup.freeze"): "0\n"}
        self.writes = []

    def has(self, cg, name):
        return (cg, name) in self.files

    def read(self, cg, name):
        return self.files[(cg, name)]

    def read_int(self, cg, name):
        v = self.read(cg, name).strip()
        return None if v == "max" else int(v)

    def write(self, cg, name, value):
        self.writes.append((cg, name, value))

    def freeze(self, cg, frozen=True):
        self.write(cg, "cgroup.freeze", "1" if frozen else "0")

    def kill(self, cg):
        self.write(cg, "cgroup.kill", "1")


class Events:
    def __init__(self):
        self.got = []

    def emit(self, kind, **f):
        self.got.append((kind, f))


def test_dry_run_decides_and_records_but_writes_nothing():
    fs, ev = RecordingFS(), Events()
    act = Actuator(fs, ev, dry_run=True)
    t = tool(["pytest"])
    rec = act.act(t, "throttle", "test", new_high=64 * MiB)
    assert rec["old"] == "max" and rec["new"] == str(64 * MiB) and rec["dry_run"]
    act.act(t, "freeze", "test")
    act.act(t, "kill", "test")
    assert fs.writes == []
    assert [f["action"] for _, f in ev.got] == ["throttle", "freeze", "kill"]
    assert not t.frozen
    assert not any(a["action"] == "kill" for a in t.actions)     # a dry run never makes an outcome "killed"


def test_real_actions_write_log_and_tell_the_agent():
    fs, ev = RecordingFS(), Events()
    sent = []
    box = Outbox()
    act = Actuator(fs, ev, tell=box.tell)
    t = tool(["bash", "-c", "cd x && pytest -q"])
    box.bind(t.key, types.SimpleNamespace(send=sent.append))
    act.act(t, "throttle", "memory is short", new_high=100 * MiB)
    act.act(t, "freeze", "memory is short")
    act.act(t, "thaw", "pressure gone")
    act.act(t, "kill", "memory is short")
    assert fs.writes == [("x/0001-batch", "memory.high", str(100 * MiB)), ("x/0001-batch", "cgroup.freeze", "1"),
                         ("x/0001-batch", "cgroup.freeze", "0"), ("x/0001-batch", "cgroup.kill", "1")]
    assert [a["action"] for a in t.actions] == ["throttle", "freeze", "thaw", "kill"]
    assert t.actions[1]["seconds"] >= 0
    assert len(sent) == 4 and all(b'"notice"' in s for s in sent)
    assert b"pytest is being slowed down" in sent[0]
    assert "pytest resumed after" in notice_text(t, t.actions[2])


def test_actions_a_client_asks_for_go_through_the_actuator_and_honour_a_dry_run():
    fs, ev = RecordingFS(), Events()
    t = tool(["make"])
    Actuator(fs, ev, dry_run=True).requested(t, "kill")
    assert fs.writes == [] and t.actions == [] and ev.got[0][0] == "dry_run"
    act = Actuator(fs, ev)
    act.requested(t, "freeze")
    assert t.frozen and fs.writes[-1] == ("x/0001-batch", "cgroup.freeze", "1")
    act.requested(t, "thaw")
    act.requested(t, "kill")
    assert fs.writes[-1] == ("x/0001-batch", "cgroup.kill", "1") and t.actions[-1]["action"] == "kill"
    assert [f["action"] for k, f in ev.got if k == "action"] == ["freeze", "thaw", "kill"]


def test_notices_reach_only_the_connection_that_started_the_call():
    box, sent, other = Outbox(), [], []
    act = Actuator(RecordingFS(), Events(), tell=box.tell)
    t, u = tool(["make"]), tool(["make"], key="0002-batch")
    box.bind(t.key, types.SimpleNamespace(send=sent.append))
    box.bind(u.key, types.SimpleNamespace(send=other.append))
    act.notify(t, "gpu_over_budget", "[agentd] make holds too much")
    box.unbind(u.key)
    act.notify(u, "gpu_over_budget", "[agentd] gone")
    assert len(sent) == 1 and b"holds too much" in sent[0] and other == []


def test_daemon_history_is_batched_and_a_full_one_warns_once_at_flush(tmp_path, caplog):
    f = Forecasting(policy(), str(tmp_path / "state"), 8 * GiB)
    assert f.store.batch                              # written at the enforcer's tick
    agent = types.SimpleNamespace(agent_class="normal")
    f.record(tool(["make"]), agent, result(10 * MiB))
    assert f.store.count() == 1
    full = HistoryStore(":memory:", max_bytes=64 * 1024, batch=True)
    f.store = f.forecaster.store = full
    argv = ["make", "-j8"] + ["x" * 4000] * 60
    with caplog.at_level(logging.WARNING, logger="agentd.enforce"):
        for _ in range(3):
            f.record(tool(argv), agent, result(50 * MiB))
        f.flush()
        f.flush()
    assert f.mode == "off"
    assert sum("history disabled" in r.message for r in caplog.records) == 1
    assert f.forecast(["make", "-j8"], "batch", "a", "normal").source.startswith("prior")
