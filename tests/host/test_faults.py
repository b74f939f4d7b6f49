"""Faults the daemon must survive with a clear log line: BPF that will not load, cgroups
removed behind its back, processes that vanish between lookup and move."""

import os
import subprocess
import time

from tests.helpers import DaemonProc, agentd_cmd


def test_bpf_load_failure_falls_back_to_polling(tmp_path, test_root, cgfs):
    empty = tmp_path / "no-bpf"
    empty.mkdir()
    d = DaemonProc(str(tmp_path), test_root, extra_env={"AGENTD_BPF_DIR": str(empty)}).start()
    try:
        st = d.request({"op": "status"})
        assert st["modes"]["detection"] == "poll", st["modes"]
        why = st["mode_details"]["detection"]["reason"]
        assert "BPF" in why or "polling" in why, why
        # Still detected by polling: a child that runs long enough to be seen.
        r = d.run('sh -c "sleep 1.5; grep ^0:: /proc/self/cgroup"; true', name="nobpf")
        assert r.returncode == 0, r.stderr
        assert "/agents/nobpf/tools/" in r.stdout
        assert d.request({"op": "hello"})["ok"]
        log = d.log()
        assert "polling" in log and "Traceback" not in log
    finally:
        d.cleanup()


def test_cgroup_removed_behind_agentds_back(daemon, cgfs):
    """Someone kills a running tool call's cgroup and removes it; then the agent's too."""
    p = subprocess.Popen(agentd_cmd() + ["run", "--name", "gone", "--", "bash", "-c",
                                         '"$@" tool -- sleep 60; echo "tool=$?"; read -t 60 x < /dev/null; sleep 60',
                                         "a", *agentd_cmd()],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        base = f"{daemon.root}/agents/gone/tools"
        deadline = time.monotonic() + 15
        tool = None
        while time.monotonic() < deadline and tool is None:
            kids = cgfs.children(base) if cgfs.exists(base) else []
            # The cgroup exists before the launcher clones the tool into it: wait for the process.
            if kids and cgfs.populated(f"{base}/{kids[0]}"):
                tool = kids[0]
            time.sleep(0.05)
        assert tool is not None, "the tool call never started"
        cgfs.kill(f"{base}/{tool}")
        cgfs.wait_empty(f"{base}/{tool}", 5)
        cgfs.rmdir(f"{base}/{tool}")
        ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "gone")
        assert ev["status"] == {"signal": 9}
        # Now the whole agent: its processes killed, its cgroups removed.
        cgfs.kill(f"{daemon.root}/agents/gone")
        cgfs.wait_empty(f"{daemon.root}/agents/gone", 5)
        cgfs.remove_tree(f"{daemon.root}/agents/gone")
        daemon.wait_event(lambda e: e["event"] == "agent_end" and e["agent"] == "gone")
        assert daemon.request({"op": "hello"})["ok"]
        assert "Traceback" not in daemon.log()
    finally:
        p.kill()
        p.wait()


def test_process_that_vanishes_before_its_move(daemon, cgfs):
    """A child that exits between the daemon's checks and the move into its cgroup."""
    import json
    import socket
    child = subprocess.Popen(["true"])
    child.wait()              # reaped: the pid is gone
    zombie = subprocess.Popen(["sh", "-c", "exit 0"])
    time.sleep(0.2)           # exited, not reaped: /proc still lists it, it cannot be moved
    replies = []
    for pid in (child.pid, zombie.pid):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(daemon.socket)
            s.sendall((json.dumps({"v": 1, "op": "run_start", "pid": pid, "name": f"v{pid}"}) + "\n").encode())
            replies.append(json.loads(s.makefile().readline()))
    # The reaped pid is refused outright.
    assert replies[0]["ok"] is False and replies[0]["error"]["code"] in ("gone", "not_child"), replies[0]
    # The kernel lets a zombie be moved: its agent exists until the connection that made it
    # is gone and its main cgroup is empty, then the sweep removes it.
    zombie.wait()
    deadline = time.monotonic() + 10
    while cgfs.children(f"{daemon.root}/agents") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cgfs.children(f"{daemon.root}/agents") == []
    assert daemon.request({"op": "hello"})["ok"]
    assert "Traceback" not in daemon.log()
