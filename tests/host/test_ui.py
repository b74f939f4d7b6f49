"""`agentd status`, `top`, `events` and `report` against a real daemon on the host."""

import json
import os
import struct
import subprocess
import time

import pytest

from tests.host.ops_support import WAIT, Gate
from tests.helpers import REPO, agentd_cmd, python_cmd

AGENT = r'''
front="$1"; shift; gate="$1"; shift
"$front" "$@" tool -- true
"$front" "$@" tool -- sh -c 'exit 2'
"$front" "$@" tool --class batch -- python3 -c 'import time; x = bytearray(64 << 20); time.sleep(60)' &
''' + WAIT + r'''
kill %1 2>/dev/null; wait
'''


def cli(daemon, *args, env=None, timeout=30):
    return subprocess.run(python_cmd() + list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(daemon.env, **(env or {})), cwd=REPO)


@pytest.fixture
def busy_agent(daemon, tmp_path):
    """An agent with two finished tool calls and one running (64 MiB held) until the test ends."""
    gate = Gate(tmp_path / "gate")
    front = agentd_cmd()
    proc = subprocess.Popen(agentd_cmd() + ["run", "--name", "uiag", "--", "bash", "-c", AGENT, "agent",
                                            front[0], gate.path, *front[1:]],
                            env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    daemon.wait_event(lambda e: e["event"] == "tool_start" and e.get("tool_class") == "batch", timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:       # until the running call holds its 64 MiB
        snap = json.loads(cli(daemon, "status", "--json", "--socket", daemon.socket).stdout)
        tools = snap["agents"][0]["tools"] if snap["agents"] else []
        if tools and (tools[0]["memory_bytes"] or 0) >= 64 << 20:
            break
        time.sleep(0.2)
    proc.gate = gate
    yield proc
    gate.open()
    proc.wait(30)


def test_status_table_and_json(daemon, busy_agent):
    r = cli(daemon, "status", "--json", "--socket", daemon.socket)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    [a] = snap["agents"]
    assert a["agent"] == "uiag" and a["main_cgroup"].endswith("agents/uiag/main")
    [t] = a["tools"]
    assert t["tool_class"] == "batch" and t["argv"][0] == "python3"
    assert t["memory_bytes"] >= 64 << 20 and t["memory_peak_bytes"] >= t["memory_bytes"]
    assert a["memory_bytes"] >= t["memory_bytes"]
    assert "some" in a["pressure"]["memory"]
    assert snap["tool_calls"]["started"] == 3 and snap["tool_calls"]["finished"] == {"failed": 1, "ok": 1}
    assert snap["event_log"] == daemon.event_log
    r = cli(daemon, "status", "--socket", daemon.socket)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    agent_line = next(line for line in lines if line.startswith("uiag "))
    assert agent_line.split()[1] == a["agent_class"]
    tool_line = next(line for line in lines if line.strip().startswith(t["tool"]))
    assert "batch" in tool_line and "MiB" in tool_line and "python3 -c" in tool_line
    assert "3 started; finished: 1 failed, 1 ok" in r.stdout


def test_top_once_and_frames(daemon, busy_agent):
    r = cli(daemon, "top", "--once", "--socket", daemon.socket)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout          # not a terminal: no escape codes
    assert any(line.startswith("uiag ") for line in r.stdout.splitlines())
    r = cli(daemon, "top", "--iterations", "2", "--interval", "0.2", "--socket", daemon.socket)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("uiag ") == 2 and "tool calls/s" in r.stdout


def test_events_filter_and_follow(daemon, busy_agent, tmp_path):
    r = cli(daemon, "events", "--agent", "uiag", "--type", "tool_end", "--socket", daemon.socket)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("tool_end" in line and "uiag/" in line for line in lines)
    assert "failed" in lines[1] and "ok" in lines[0]
    r = cli(daemon, "events", "--json", "--agent", "nobody", "--event-log", daemon.event_log)
    assert r.returncode == 0 and r.stdout == ""
    raw = [json.loads(line) for line in cli(daemon, "events", "--json", "--event-log", daemon.event_log)
           .stdout.splitlines()]
    assert raw == daemon.events()[: len(raw)]
    # --follow prints what is appended after it started, filtered.
    f = subprocess.Popen(python_cmd() + ["events", "--follow", "--last", "0", "--type", "agent_end",
                                         "--event-log", daemon.event_log],
                         stdout=subprocess.PIPE, text=True, env=daemon.env, cwd=REPO)
    try:
        time.sleep(1.0)
        busy_agent.gate.open()
        busy_agent.wait(30)
        line = f.stdout.readline()
        assert "agent_end" in line and "uiag" in line
    finally:
        f.terminate()
        f.wait(10)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_png_and_missing_matplotlib(daemon, busy_agent, tmp_path):
    busy_agent.gate.open()
    busy_agent.wait(30)
    daemon.wait_event(lambda e: e["event"] == "agent_end" and e["agent"] == "uiag")
    out = tmp_path / "r.png"
    r = cli(daemon, "report", "--agent", "uiag", "-o", str(out), "--event-log", daemon.event_log)
    assert r.returncode == 0, r.stderr
    assert png_size(out) == (1200, 600)
    assert r.stdout.startswith(f"{out}: 3 tool calls")
    r = cli(daemon, "report", "--agent", "nobody", "-o", str(tmp_path / "n.png"), "--event-log", daemon.event_log)
    assert r.returncode == 1 and "no tool calls of agent 'nobody'" in r.stderr
    # Without matplotlib: one clear sentence, no traceback.
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    r = cli(daemon, "report", "-o", str(tmp_path / "m.png"), "--event-log", daemon.event_log,
            env={"PYTHONPATH": f"{stub.parent}{os.pathsep}{REPO}"})
    assert r.returncode == 1 and "pip install 'agentd[plot]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.png").exists()
