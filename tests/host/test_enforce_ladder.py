"""The pressure ladder's wiring in a real daemon on the host's cgroup v2 tree, driven by a
FAKE pressure source: a file in PSI format named by AGENTD_PRESSURE_FILE, which the daemon
polls instead of arming kernel PSI triggers (status says `pressure: poll`). What this shows
is real: tool calls are frozen lowest priority first (and no other beside one that keeps
its memory), thawed, killed, and told so, through cgroup.freeze and cgroup.kill (the
order of thaws among several paused calls: tests/unit/test_enforce_wiring.py). What it does not show is the
ladder's real trigger path: the kernel's PSI triggers firing under a real memory hog,
throttling through memory.high (this host has no memory controller), the memory watch.
That path is covered in the kernel tier, by
tests/kernel/test_agentd_enforce.py::test_ladder_throttles_freezes_kills_lowest_priority_first
(and the memory-watch and admission tests beside it)."""

import json
import os
import subprocess
import threading
import time

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd

POLICY = """\
version: 1
pressure:
  steps: {steps}
  step_interval_s: 0.3
  relief_interval_s: 1.0
admission:
  enabled: false
# These tests are about `agentd tool`: the agent's own shell commands stay out.
detection:
  enabled: false
"""

SCRIPT = """\
OUT="$1"; shift      # then the agentd command
AGENTD_FEEDBACK_FILE="$OUT/batch.json" "$@" tool --class batch -- sleep 60 2>"$OUT/batch.err" &
sleep 0.3
AGENTD_FEEDBACK_FILE="$OUT/inter.json" "$@" tool --class interactive -- sleep 60 2>"$OUT/inter.err" &
wait
echo main-alive > "$OUT/main.txt"
"""


class FakePressure:
    """Writes a PSI-format file whose `some total=` grows while `on` is set."""

    def __init__(self, path):
        self.path = path
        self.total = 0
        self.on = threading.Event()
        self.stop = threading.Event()
        self._write()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={self.total}\n"
                    f"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        os.replace(tmp, self.path)

    def _run(self):
        while not self.stop.wait(0.1):
            if self.on.is_set():
                self.total += 150_000          # 150 ms stalled per 100 ms: heavy pressure
                self._write()

    def close(self):
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def ladder_daemon(tmp_path, test_root, request):
    steps = getattr(request, "param", "[freeze]")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(steps=steps))
    fake = FakePressure(str(tmp_path / "pressure"))
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy), extra_env={"AGENTD_PRESSURE_FILE": fake.path})
    d.start()
    d.fake = fake
    yield d
    fake.close()
    d.cleanup()


def start_agent(d, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(agentd_cmd() + ["run", "--name", name, "--", "bash", "-c", SCRIPT, "agent",
                                            str(out), *agentd_cmd()],
                            env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def tools_of(d, name, n, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.request({"op": "status"})
        for a in st.get("agents", []):
            if a["agent"] == name and len(a["tools"]) >= n:
                return {t["tool_class"]: t["tool"] for t in a["tools"]}
        time.sleep(0.05)
    raise AssertionError(f"agent {name} did not start {n} tool calls: {d.log()[-2000:]}")


def wait_until(pred, what, timeout=5):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def actions(d):
    return [(e["action"], e["tool"]) for e in d.events() if e.get("event") == "action" and e.get("tool")]


def test_freeze_lowest_priority_first_never_beside_it_and_thaw(ladder_daemon, cgfs, tmp_path):
    d = ladder_daemon
    proc, out = start_agent(d, tmp_path, "ladder")
    try:
        tools = tools_of(d, "ladder", 2)
        batch, inter = tools["batch"], tools["interactive"]
        cg = f"{d.root}/agents/ladder/tools"
        d.fake.on.set()
        d.wait_event(lambda e: e.get("action") == "freeze" and e.get("tool") == batch, timeout=15)
        wait_until(lambda: cgfs.frozen(f"{cg}/{batch}"), "the batch call frozen")
        # The stall goes on for several step intervals. This host has no swap for the
        # frozen call's memory: freezing the interactive call beside it would free nothing,
        # so the ladder leaves it running (the policy has no kill step to take instead).
        time.sleep(2.0)
        d.fake.on.clear()
        assert not cgfs.frozen(f"{cg}/{inter}")
        d.wait_event(lambda e: e.get("action") == "thaw" and e.get("tool") == batch, timeout=20)
        wait_until(lambda: not cgfs.frozen(f"{cg}/{batch}"), "the batch call thawed")
        assert actions(d) == [("freeze", batch), ("thaw", batch)]
        status = d.request({"op": "status"})
        assert status["modes"]["pressure"] == "poll"     # the fake source is polled, by design
        for t in (batch, inter):
            assert d.request({"op": "kill", "agent": "ladder", "tool": t})["ok"]
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Each agent was told while it ran, and the machine-readable result carries the actions.
    err = (out / "batch.err").read_text()
    assert "[agentd] sleep is paused" in err and "[agentd] sleep resumed after" in err, err
    res = json.loads((out / "batch.json").read_text().splitlines()[-1])
    kinds = [a["action"] for a in res["actions"]]
    assert kinds[:2] == ["freeze", "thaw"], res["actions"]
    assert res["actions"][0]["seconds"] > 0
    assert (out / "main.txt").read_text().strip() == "main-alive"


@pytest.mark.parametrize("ladder_daemon", ["[freeze, kill]"], indirect=True)
def test_kill_step_kills_the_tool_call_not_the_agent(ladder_daemon, cgfs, tmp_path):
    d = ladder_daemon
    proc, out = start_agent(d, tmp_path, "killer")
    try:
        tools = tools_of(d, "killer", 2)
        batch, inter = tools["batch"], tools["interactive"]
        d.fake.on.set()
        d.wait_event(lambda e: e.get("action") == "kill" and e.get("tool") == batch, timeout=15)
        d.fake.on.clear()
        got = actions(d)
        assert got[:2] == [("freeze", batch), ("kill", batch)], got
        # The interactive call survives the batch call's kill (it is at most frozen, then thawed).
        d.wait_event(lambda e: e.get("event") == "tool_end" and e.get("tool") == batch, timeout=10)
        assert ("kill", inter) not in actions(d)
        assert d.request({"op": "kill", "agent": "killer", "tool": inter})["ok"]
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (out / "batch.err").read_text()
    assert "[agentd] sleep was killed by agentd" in err, err
    res = json.loads((out / "batch.json").read_text().splitlines()[-1])
    assert res["outcome"] == "killed"
    assert (out / "main.txt").read_text().strip() == "main-alive"
