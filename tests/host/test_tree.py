"""The agent / tool-call tree on the host's real cgroup v2 hierarchy."""

import json
import os
import re
import subprocess
import time

from tests.helpers import agentd_cmd


def _cg(path_text):
    return [line[3:] for line in path_text.splitlines() if line.startswith("0::")][0]


def test_run_places_agent_and_propagates_status(daemon, cgfs):
    # $(<file) reads in the shell itself: no exec, so no automatic tool call.
    r = daemon.run('while read -r l; do c=$l; done </proc/self/cgroup; echo "$c"; exit 7', name="ag1")
    assert r.returncode == 7, r.stderr
    assert _cg(r.stdout) == f"/{daemon.root}/agents/ag1/main"
    # The agent's tree is gone once it ends.
    assert cgfs.children(f"{daemon.root}/agents") == []
    ev = daemon.wait_event(lambda e: e["event"] == "agent_end" and e["agent"] == "ag1")
    assert ev["reason"] == "agent exited"


def test_tool_call_gets_its_own_cgroup_and_event(daemon, cgfs):
    r = daemon.run('agentd_front="$1"; shift; "$agentd_front" "$@" tool --class batch -- '
                   'sh -c "grep ^0:: /proc/self/cgroup; exit 4"; echo "tool=$?"',
                   *agentd_cmd(), name="ag2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"0::/{daemon.root}/agents/ag2/tools/0001-batch"
    assert lines[1] == "tool=4"
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "ag2")
    assert ev["status"] == {"exit": 4} and ev["outcome"] == "failed"
    assert ev["argv"][:2] == ["sh", "-c"] and ev["tool_class"] == "batch"
    assert ev["wall_s"] > 0 and "memory_peak_bytes" in ev and "memory_events" in ev
    assert not cgfs.exists(f"{daemon.root}/agents/ag2")


FORK_STORM = r'''
out="$1"
for i in $(seq 50); do ( grep ^0:: /proc/self/cgroup >> "$out.$i"; sleep 0.2 ) & done
wait
'''


def test_fork_storm_is_fully_contained(daemon, cgfs, tmp_path):
    out = str(tmp_path / "cg")
    script = 'f="$1"; shift; "$@" tool -- bash -c "$0" storm "$f"'
    r = subprocess.run(agentd_cmd() + ["run", "--name", "storm", "--", "bash", "-c", script, FORK_STORM, out,
                                       *agentd_cmd()],
                       capture_output=True, text=True, timeout=60, env=daemon.env)
    assert r.returncode == 0, r.stderr
    seen = []
    for i in range(1, 51):
        with open(f"{out}.{i}") as f:
            seen.append(f.read().strip())
    want = f"0::/{daemon.root}/agents/storm/tools/0001-normal"
    assert seen.count(want) == 50, set(seen)


def test_stragglers_are_killed_and_nothing_is_left(daemon, cgfs, tmp_path):
    pidfile = tmp_path / "bg.pid"
    r = daemon.run('"$@" tool -- bash -c "sleep 300 & echo \\$! > ' + str(pidfile) + '"; echo done',
                   *agentd_cmd(), name="strag")
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "straggler survived its tool call"
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "strag")
    assert ev["stragglers"] == 1
    assert "background process" in r.stderr
    assert not cgfs.exists(f"{daemon.root}/agents/strag")


def _wait_tool(cgfs, root, agent, timeout=60 if os.environ.get("AGENTD_KERNEL_TIER") else 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        base = f"{root}/agents/{agent}/tools"
        if cgfs.exists(base):
            kids = cgfs.children(base)
            if kids and cgfs.populated(f"{base}/{kids[0]}"):
                return kids[0]
        time.sleep(0.05)
    raise AssertionError("tool call never appeared")


def test_freeze_and_kill_tool_call_agent_lives_on(daemon, cgfs, tmp_path):
    counter = tmp_path / "count"
    script = ('"$@" tool -- bash -c "i=0; while true; do i=\\$((i+1)); echo \\$i > ' + str(counter) +
              '; sleep 0.02; done"; echo "tool=$?"; echo agent-alive')
    p = subprocess.Popen(agentd_cmd() + ["run", "--name", "frz", "--", "bash", "-c", script, "a", *agentd_cmd()],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        tool = _wait_tool(cgfs, daemon.root, "frz")
        deadline = time.monotonic() + (60 if os.environ.get("AGENTD_KERNEL_TIER") else 10)
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.05)      # the counting loop has started
        r = daemon.request({"op": "freeze", "agent": "frz", "tool": tool})
        assert r["ok"], r
        cg = f"{daemon.root}/agents/frz/tools/{tool}"
        # The kernel reports frozen once every task has stopped: only then must the counter stand.
        deadline = time.monotonic() + 10
        while not cgfs.frozen(cg) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cgfs.frozen(cg)
        a = counter.read_text()
        time.sleep(0.3)
        assert counter.read_text() == a, "counter advanced while frozen"
        assert daemon.request({"op": "thaw", "agent": "frz", "tool": tool})["ok"]
        # Each step of the loop starts a `sleep`: slow on a busy host and in the emulated guest.
        deadline = time.monotonic() + 30
        while counter.read_text() == a and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counter.read_text() != a, "counter did not resume after thaw"
        assert daemon.request({"op": "kill", "agent": "frz", "tool": tool})["ok"]
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert "tool=137" in out and "agent-alive" in out, (out, err)
    assert p.returncode == 0
    assert "was killed by agentd" in err
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "frz")
    assert ev["outcome"] == "killed"


def test_daemon_kill9_and_restart_readopts_running_tool(daemon, cgfs, tmp_path):
    gate = tmp_path / "gate"
    script = ('"$@" tool -- bash -c "while [ ! -e ' + str(gate) + ' ]; do sleep 0.05; done; exit 5"; '
              'echo "tool=$?"')
    p = subprocess.Popen(agentd_cmd() + ["run", "--name", "k9", "--", "bash", "-c", script, "a", *agentd_cmd()],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        tool = _wait_tool(cgfs, daemon.root, "k9")
        daemon.kill9()
        # Agent and tool call keep running while the daemon is away.
        assert cgfs.populated(f"{daemon.root}/agents/k9/tools/{tool}")
        assert cgfs.populated(f"{daemon.root}/agents/k9/main")
        # A leftover empty tool cgroup from a crash is removed on restart.
        cgfs.mkdir(f"{daemon.root}/agents/k9/tools/0099-normal")
        daemon.start()
        ev = daemon.wait_event(lambda e: e["event"] == "agent_adopted" and e["agent"] == "k9")
        assert ev["tools"] == [tool]
        assert not cgfs.exists(f"{daemon.root}/agents/k9/tools/0099-normal")
        st = daemon.request({"op": "status"})
        [ag] = [a for a in st["agents"] if a["agent"] == "k9"]
        assert [t["tool"] for t in ag["tools"]] == [tool]
        assert ag["tools"][0]["argv"][:2] == ["bash", "-c"]   # argv restored from the state file
        gate.write_text("go")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "tool=5" in out, (out, err)
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "k9" and e.get("tool") == tool)
    assert ev["status"] == {"exit": 5}
    daemon.wait_event(lambda e: e["event"] == "agent_end" and e["agent"] == "k9")
    assert cgfs.children(f"{daemon.root}/agents") == []


def standalone_policy(tmp_path):
    """The shipped default with the state dir in the test's tmp: a standalone run as root
    keeps its history in the policy's daemon.state_dir, never the machine's /var/lib/agentd."""
    from agentd.policy.loader import resolve_policy
    path = tmp_path / "standalone.yaml"
    text, n = re.subn(r"(?m)^  state_dir: .*$", f"  state_dir: {tmp_path / 'state'}",
                      resolve_policy("default").read_text())
    assert n == 1
    path.write_text(text)
    return str(path)


def test_standalone_run_without_daemon(cgfs, tmp_path):
    env = dict(os.environ, AGENTD_SOCKET=str(tmp_path / "nothing.sock"))
    log = tmp_path / "ev.jsonl"
    r = subprocess.run(agentd_cmd() + ["run", "--policy", standalone_policy(tmp_path), "--event-log", str(log),
                                       "--", "bash", "-c",
                                       'while read -r l; do c=$l; done </proc/self/cgroup; echo "$c"; "$@" tool -- grep ^0:: /proc/self/cgroup; exit 3',
                                       "a", *agentd_cmd()],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3, r.stderr
    main, tool = r.stdout.splitlines()
    assert main.startswith("0::/agentd.standalone/") and main.endswith("/main")
    assert tool.startswith(main[:-len("/main")] + "/tools/0001-")
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["event"] for e in evs if e["event"] in ("agent_start", "tool_end", "agent_end")] == \
        ["agent_start", "tool_end", "agent_end"]
    pid_root = main[3:].split("/agents/")[0].strip("/")
    assert not cgfs.exists(pid_root)


def test_automatic_detection_places_plain_children(daemon, cgfs, tmp_path):
    """An agent that never calls `agentd tool`: each child it spawns that execs is a tool call,
    and every process a storm-forking child starts is inside that tool call's cgroup."""
    out = str(tmp_path / "auto")
    storm = f'for i in $(seq 30); do (grep ^0:: /proc/self/cgroup > {out}.$i) & done; wait; exit 6'
    # (bash execs its last command in place, so a builtin comes last.)
    r = daemon.run('sh -c "$1"; echo "rc=$?"; sh -c "exit 0"; true', storm, name="auto1")
    assert r.returncode == 0, r.stderr
    assert "rc=6" in r.stdout
    seen = {open(f"{out}.{i}").read().strip() for i in range(1, 31)}
    assert len(seen) == 1 and seen.pop().startswith(f"0::/{daemon.root}/agents/auto1/tools/0001-"), seen
    ev = daemon.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "auto1" and e["tool"].startswith("0001"))
    assert ev["origin"] == "auto" and ev["argv"][:2] == ["sh", "-c"]
    # The exit status comes from the BPF lifecycle program, which the host tier has
    # (the polling fallback cannot know it: tests/host/test_faults.py covers that mode).
    assert daemon.request({"op": "status"})["modes"]["detection"] == "bpf-stop"
    assert ev["status"] == {"exit": 6} and ev["outcome"] == "failed", ev
    daemon.wait_event(lambda e: e["event"] == "tool_start" and e["agent"] == "auto1" and e["tool"].startswith("0002"))


def test_daemon_moves_into_its_leaf(daemon, cgfs):
    assert daemon.proc.pid in cgfs.procs(f"{daemon.root}/daemon")


def test_successive_standalone_runs_share_the_forecast_history(cgfs, tmp_path):
    """A laptop without a daemon: the second run's forecast for a command comes from the
    peak the first run measured, and the history sits in the state dir, not in memory.
    Each run also serves /metrics when asked."""
    import urllib.request
    from tests.host.test_metrics_series import free_port
    policy = standalone_policy(tmp_path)
    env = dict(os.environ, AGENTD_SOCKET=str(tmp_path / "nothing.sock"))
    # The peak recorded is the kernel's (memory.peak), or where this host lacks the memory
    # controller the daemon's own samples (every 0.5 s): the hog holds its pages past two.
    hog = ("import time; x = bytearray(300 << 20); [x.__setitem__(i, 1) for i in range(0, len(x), 4096)]; "
           "time.sleep(1.5)")
    # Declared interactive (no rule of the default policy matches): a 256 MiB class prior,
    # which the call's ~310 MiB peak exceeds.
    script = ('"$@" tool --class interactive -- python3 -c "$HOG" && '
              'python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read()'
              '.decode())" "$URL" > "$OUT"')
    ends = []
    for run in (1, 2):
        log, port = tmp_path / f"ev{run}.jsonl", free_port()
        r = subprocess.run(agentd_cmd() + ["run", "--policy", policy, "--event-log", str(log),
                                           "--metrics-listen", f"127.0.0.1:{port}", "--", "bash", "-c", script,
                                           "a", *agentd_cmd()],
                           capture_output=True, text=True, timeout=120,
                           env=dict(env, HOG=hog, URL=f"http://127.0.0.1:{port}/metrics",
                                    OUT=str(tmp_path / f"metrics{run}.txt")))
        assert r.returncode == 0, r.stderr
        evs = [json.loads(x) for x in log.read_text().splitlines()]
        ends.append(next(e for e in evs if e["event"] == "tool_end" and e["argv"][:1] == ["python3"]))
        assert "agentd_tool_calls_started_total" in (tmp_path / f"metrics{run}.txt").read_text()
    assert os.path.exists(tmp_path / "state" / "history.sqlite")
    first, second = ends
    assert first["memory_peak_bytes"] >= 300 << 20, first
    # The first run knew nothing of this command: the class prior. The second forecasts from
    # the first's peak: above it (the predictor's margin), so above the prior too.
    assert first["forecast_bytes"] == 256 << 20, first
    assert second["forecast_bytes"] > first["memory_peak_bytes"] > first["forecast_bytes"], (first, second)
