"""API authorisation and bad input against a real daemon on the host."""

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import agentd_cmd


BAD_REQUESTS = [
    (b"not json\n", "bad_json"),
    (b"[1,2]\n", "bad_request"),
    (b'{"op":"hello"}\n', "bad_version"),
    (b'{"v":2,"op":"hello"}\n', "bad_version"),
    (b'{"v":1,"op":"explode"}\n', "bad_op"),
    (b'{"v":1,"op":"tool_done","agent":"a"}\n', "missing_field"),
    (b'{"v":1,"op":"tool_attach","agent":"a","tool":"t","pid":1}\n', "forbidden"),
    (b'{"v":1,"op":"tool_start","pid":"12","argv":["x"]}\n', "bad_field"),
    (b'{"v":1,"op":"tool_start","pid":true,"argv":["x"]}\n', "bad_field"),
    (b'{"v":1,"op":"tool_start","pid":-4,"argv":["x"]}\n', "bad_field"),
    (b'{"v":1,"op":"tool_start","pid":12,"argv":[]}\n', "bad_field"),
    (b'{"v":1,"op":"tool_start","pid":12,"argv":["a\\u0000b"]}\n', "bad_field"),
    (b'{"v":1,"op":"tool_start","pid":12,"argv":["x"],"extra":1}\n', "bad_field"),
    (b'{"v":1,"op":"tool_done","agent":"a","tool":"t","status":{"exit":"0"}}\n', "bad_field"),
    (b'\xff\xfe\n', "bad_json"),
    (b'{"v":1,"op":"freeze","agent":"../../x","tool":"y"}\n', "bad_name"),
    (b'{"v":1,"op":"run_start","pid":5,"name":"a/b"}\n', "bad_name"),
    (b'{"v":1,"op":"tool_start","pid":5,"argv":["x"],"class":".."}\n', "bad_name"),
]


@pytest.mark.parametrize("raw,code", BAD_REQUESTS)
def test_malformed_requests_get_specific_errors(daemon, raw, code):
    r = daemon.request(None, raw=raw)
    assert r["ok"] is False and r["error"]["code"] == code, r
    assert daemon.request({"op": "hello"})["ok"]      # still serving


def test_oversized_request_is_refused(daemon):
    r = daemon.request(None, raw=b'{"v":1,"op":"hello","x":"' + b"a" * 400_000 + b'"}\n')
    assert r["ok"] is False and r["error"]["code"] == "too_long"
    assert daemon.request({"op": "hello"})["ok"]


def test_refusals_are_logged(daemon):
    daemon.request(None, raw=b"garbage\n")
    time.sleep(0.2)
    assert "bad_json" in daemon.log()


def test_tool_outside_any_agent_is_refused(daemon):
    r = subprocess.run(agentd_cmd() + ["tool", "--", "true"], capture_output=True, text=True, env=daemon.env)
    assert r.returncode == 125
    assert "inside an agent" in r.stderr


def test_pid_that_is_not_my_child_is_refused(daemon):
    other = subprocess.Popen(["sleep", "30"])
    try:
        # We (pytest) are not in an agent, and `other` is our child: refused as not in agent.
        r = daemon.request({"op": "tool_start", "pid": other.pid, "argv": ["x"]})
        assert r["error"]["code"] == "not_in_agent"
        # As admin creating an agent for a process that is not our child: refused.
        r = daemon.request({"op": "run_start", "pid": 1})
        assert r["error"]["code"] == "not_child"
    finally:
        other.kill()
        other.wait()


def test_agent_cannot_touch_another_agents_tool(daemon, cgfs, tmp_path):
    """A process inside agent A asks to freeze/kill/inspect a tool call of agent B."""
    env = dict(daemon.env)
    b = subprocess.Popen(agentd_cmd() + ["run", "--name", "victim", "--", "bash", "-c",
                                         '"$@" tool -- sleep 30', "a", *agentd_cmd()], env=env)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if cgfs.exists(f"{daemon.root}/agents/victim/tools") and cgfs.children(f"{daemon.root}/agents/victim/tools"):
                break
            time.sleep(0.05)
        tool = cgfs.children(f"{daemon.root}/agents/victim/tools")[0]
        # The attacker runs as a non-root user inside agent "attacker": uid alone does not make it admin.
        attack = (
            "import json,socket,sys\n"
            "def req(o):\n"
            "    s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((json.dumps(dict(v=1,**o))+'\\n').encode())\n"
            "    return json.loads(s.makefile().readline())\n"
            f"for op in ('freeze','kill','thaw'):\n"
            f"    print(req(dict(op=op, agent='victim', tool='{tool}'))['error']['code'])\n"
            "print(req(dict(op='status', agent='victim'))['error']['code'])\n"
            "print(len(req(dict(op='status'))['agents']))\n"
        )
        r = subprocess.run(agentd_cmd() + ["run", "--name", "attacker", "--", "setpriv", "--reuid=65534",
                                           "--regid=65534", "--clear-groups", sys.executable, "-c", attack,
                                           daemon.socket],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["forbidden", "forbidden", "forbidden", "forbidden", "1"]
        assert cgfs.populated(f"{daemon.root}/agents/victim/tools/{tool}")
        assert not cgfs.frozen(f"{daemon.root}/agents/victim/tools/{tool}")
    finally:
        b.terminate()
        b.wait(20)


def test_non_root_without_group_cannot_create_agents(daemon):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "agentd", "run", "--", "true"], capture_output=True, text=True, env=daemon.env, timeout=30)
    assert r.returncode == 125
    assert "may not create agents" in r.stderr


def test_socket_is_world_connectable_but_authorised_per_request(daemon):
    mode = os.stat(daemon.socket).st_mode & 0o777
    assert mode == 0o666
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
