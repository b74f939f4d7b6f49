"""The people-facing views over literal data: status table, event lines, top frames, report timeline and PNG."""

import io
import json
import struct
import threading
import time

import pytest

from agentd.ui.events import follow, print_events
from agentd.ui.report import draw, timeline
from agentd.ui.table import event_line, status_lines
from agentd.ui.top import frame, run_top

MiB = 2**20

SNAP = {
    "uptime_s": 3725, "root": "agentd", "standalone": False, "modes": {"pressure": "psi-trigger"},
    "pressure": {"memory": {"some": 1.25}}, "tool_calls": {"started": 9, "finished": {"ok": 7, "killed": 1}},
    "warnings": ["memory controller missing"],
    "agents": [{"agent": "claude-1", "agent_class": "high", "priority": 100, "age_s": 90, "memory_bytes": 3 * 2**30,
                "limits": {"memory.high": str(6 * 2**30), "memory.max": "max"},
                "pressure": {"memory": {"some": 12.5, "full": 1.0}, "cpu": {"some": 0.0}},
                "tools": [{"tool": "0007-batch", "tool_class": "batch", "argv": ["pytest", "-q", "tests/"],
                           "memory_bytes": 800 * MiB, "memory_peak_bytes": 900 * MiB, "forecast_bytes": 1024 * MiB,
                           "limits": {"memory.max": str(2 * 2**30)}, "age_s": 12, "frozen": False,
                           "actions": ["throttle"]}]}],
}


def test_status_table():
    lines = status_lines(SNAP, width=200)
    text = "\n".join(lines)
    assert lines[0].startswith("agentd daemon up 62m, root agentd, host memory PSI 1.2%")
    assert "9 started; finished: 7 ok, 1 killed; modes: pressure=psi-trigger" in text
    agent = next(line for line in lines if line.startswith("claude-1"))
    assert agent.split()[:4] == ["claude-1", "high", "100", "1"]
    assert "3.0 GiB" in agent and "6.0 GiB" in agent and " max " in agent and "12.5%" in agent
    tool = next(line for line in lines if "0007-batch" in line)
    for part in ("800.0 MiB", "900.0 MiB", "1.0 GiB", "2.0 GiB", "throttle", "pytest -q tests/"):
        assert part in tool
    assert lines[-1] == "warning: memory controller missing"
    assert status_lines({"agents": []}) == ["no agents running"]


def test_event_lines():
    assert "throttle (memory pressure) 2147483648 -> 1073741824, 4.0 ms after the trigger" in event_line(
        {"ts": 0, "event": "action", "agent": "a", "tool": "0001-x", "action": "throttle", "reason": "memory pressure",
         "old": 2147483648, "new": 1073741824, "after_trigger_s": 0.004})
    line = event_line({"ts": 0, "event": "tool_end", "agent": "a", "tool": "0001-x", "outcome": "killed", "wall_s": 2,
                       "memory_peak_bytes": 512 * MiB, "forecast_bytes": 256 * MiB, "actions": [{"action": "kill"}]})
    assert "a/0001-x" in line and "killed in 2.00s, peak 512.0 MiB (forecast 256.0 MiB), actions kill" in line
    assert event_line({"ts": 0, "event": "reload", "ok": True, "policy": "default"}).endswith("ok=True policy=default")


def test_top_frames_and_rate():
    later = dict(SNAP, tool_calls={"started": 19, "finished": {}})
    lines = frame(later, SNAP, 2.0)
    assert "rate: 5.0 tool calls/s over the last 2.0s" in lines[2]
    snaps = iter([SNAP, later])
    out = io.StringIO()
    assert run_top(lambda: next(snaps), interval=0.01, out=out, iterations=2) == 0
    assert out.getvalue().count("claude-1") == 2 and "\x1b[" not in out.getvalue()
    with pytest.raises(OSError):
        run_top(lambda: (_ for _ in ()).throw(OSError("no daemon")), once=True, out=io.StringIO())


def events_file(tmp_path, recs):
    p = tmp_path / "ev.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs) + "not json\n")
    return str(p)


def test_print_events_filters(tmp_path):
    path = events_file(tmp_path, [{"ts": 1, "event": "tool_end", "agent": "a", "tool": "1"},
                                  {"ts": 2, "event": "tool_end", "agent": "b", "tool": "1"},
                                  {"ts": 3, "event": "action", "agent": "a", "tool": "1", "action": "kill"}])
    got = []
    assert print_events(path, agent="a", as_json=True, out=got.append) == 2
    assert [json.loads(g)["ts"] for g in got] == [1, 3]
    got.clear()
    print_events(path, kinds={"tool_end"}, last=1, out=got.append)
    assert len(got) == 1 and " b/1" in got[0]
    got.clear()
    print_events(path, last=0, out=got.append)
    assert got == []


def test_follow_survives_rotation(tmp_path):
    path = tmp_path / "ev.jsonl"
    path.write_text(json.dumps({"ts": 0, "event": "old", "agent": "a"}) + "\n")
    got, stop = [], threading.Event()
    t = threading.Thread(target=follow, kwargs=dict(path=str(path), agent="a", as_json=True, out=got.append,
                                                    poll_s=0.02, stop=stop.is_set))
    t.start()
    try:
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write(json.dumps({"ts": 1, "event": "new", "agent": "a"}) + "\n")
            f.write(json.dumps({"ts": 2, "event": "new", "agent": "b"}) + "\n")
            f.write('{"ts": 3, "event": "par')           # half a line: printed once complete
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write('tial", "agent": "a"}\n')
        time.sleep(0.2)
        path.rename(tmp_path / "ev.jsonl.1")                 # logrotate: a new file appears
        path.write_text(json.dumps({"ts": 4, "event": "rotated", "agent": "a"}) + "\n")
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(5)
    assert [json.loads(g)["event"] for g in got] == ["new", "partial", "rotated"]


EVENTS = [
    {"ts": 100.0, "event": "tool_start", "agent": "a", "tool": "0001-batch", "tool_class": "batch",
     "argv": ["pytest"], "limits": {"memory.max": str(2 * 2**30), "memory.high": "max"}},
    {"ts": 101.0, "event": "sample", "agent": "a", "tool": "0001-batch", "memory_bytes": 500 * MiB},
    {"ts": 102.0, "event": "sample", "agent": "a", "tool": "0001-batch", "memory_bytes": 1500 * MiB},
    {"ts": 102.5, "event": "action", "agent": "a", "tool": "0001-batch", "action": "throttle", "reason": "pressure"},
    {"ts": 104.0, "event": "tool_end", "agent": "a", "tool": "0001-batch", "tool_class": "batch", "outcome": "killed",
     "memory_peak_bytes": 1800 * MiB, "forecast_bytes": 1024 * MiB, "limits": {"memory.max": str(2 * 2**30)}},
    {"ts": 103.0, "event": "tool_end", "agent": "b", "tool": "0001-quick", "tool_class": "interactive",
     "argv": ["git", "status"], "outcome": "ok", "memory_peak_bytes": 4 * MiB, "wall_s": 0.5},
    {"ts": 99.0, "event": "agent_start", "agent": "a"},
]


def test_timeline():
    calls = timeline(EVENTS)
    assert list(calls) == [("a", "0001-batch"), ("b", "0001-quick")]
    a = calls[("a", "0001-batch")]
    assert a.points() == [(100.0, 0), (101.0, 500 * MiB), (102.0, 1500 * MiB), (104.0, 1500 * MiB)]
    assert a.peak_mark() == (104.0, 1800 * MiB)          # memory.peak saw more than the samples did
    assert a.limit("memory.max") == 2 * 2**30 and a.limit("memory.high") is None
    assert a.actions == [(102.5, "throttle", "pressure")] and a.forecast == 1024 * MiB
    b = calls[("b", "0001-quick")]                      # no tool_start: its start comes from wall_s
    assert b.start == 102.5 and b.points() == [(102.5, 0), (103.0, 4 * MiB)] and b.peak_mark() is None
    assert list(timeline(EVENTS, agent="b")) == [("b", "0001-quick")]


def test_draw_png(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("the report tests need matplotlib: pip install -e '.[test,plot]' (.ci/setup.sh does)")
    out = tmp_path / "r.png"
    assert draw(timeline(EVENTS), str(out)) == {"tool_calls": 2, "samples": 2, "actions": 1}
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1200, 600)


def test_progress_lines_for_logs_and_terminals():
    from agentd.ui.progress import Progress
    t = [0.0]
    out = io.StringIO()
    with Progress(200, "replaying", out=out, every=25, clock=lambda: t[0]) as p:
        for _ in range(200):
            t[0] += 0.05
            p.advance()
    lines = out.getvalue().splitlines()
    # Not a terminal: one line per 25 % step, the last one with the elapsed time.
    assert [line.split("] ")[1].split()[0] for line in lines] == ["25%", "50%", "75%", "100%"]
    assert lines[0].endswith("50/200 eta 7s") and lines[-1].endswith("200/200 10.0s")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    p = Progress(3, "bench", out=tty, clock=lambda: t[0])
    for _ in range(3):
        t[0] += 1
        p.advance()
    p.finish()
    assert tty.getvalue().count("\r") == 4 and tty.getvalue().endswith("3/3 3.0s\n")
