"""The enforcer in a real daemon on a kernel with the memory controller: a real hog drives
the PSI trigger on its agent's memory.pressure and the ladder throttles, freezes and
kills the lowest-priority tool call in that order, leaving the higher-priority call and
the agent alone; admission control makes a call wait for a running one's memory."""

import json
import os
import subprocess
import time

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd

from .kernel_support import State, wait_for

pytestmark = pytest.mark.kernel


def keep_log(d, tag):
    """Copy the daemon's log and events next to the tier's results (diagnosis after a VM run)."""
    out = os.environ.get("AGENTD_KERNEL_TIER_OUT")
    if out:
        for src, suffix in ((d.log_path, "daemon.log"), (d.event_log, "events.jsonl")):
            try:
                with open(src) as f, open(os.path.join(out, f"{tag}.{suffix}"), "w") as g:
                    g.write(f.read())
            except OSError:
                pass

MIB = 1 << 20

LADDER_POLICY = """\
version: 1
agent_classes:
  normal:
    memory: {high: 96Mi}
pressure:
  psi_some_threshold_us: 100000
  psi_window_us: 2000000
  steps: [throttle, freeze, kill]
  step_interval_s: 1.0
  relief_interval_s: 2.0
admission:
  enabled: false
"""

LADDER_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
AGENTD_FEEDBACK_FILE="$OUT/batch.json" "$@" tool --class batch -- "$HOG" alloc 400 "$OUT/batch.state" \
    2>"$OUT/batch.err" &
AGENTD_FEEDBACK_FILE="$OUT/inter.json" "$@" tool --class interactive -- "$HOG" alloc 32 "$OUT/inter.state" \
    2>"$OUT/inter.err" &
wait
echo alive > "$OUT/main.txt"
"""


def start(tmp_path, name, policy, script, hog):
    p = tmp_path / "policy.yaml"
    p.write_text(policy)
    d = DaemonProc(str(tmp_path), name, policy=str(p))
    d.start(timeout=120)
    out = tmp_path / "out"
    out.mkdir()
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "ag", "--", "bash", "-c", script, "agent", str(out),
                                             hog, *agentd_cmd()],
                             env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return d, agent, out


def stop(d, agent, cgfs):
    keep_log(d, d.root)
    try:
        if agent.poll() is None:
            agent.kill()
            agent.wait(30)
    finally:
        d.cleanup()
        if cgfs.exists(d.root):
            cgfs.kill(d.root)
            cgfs.wait_empty(d.root, 30)
            cgfs.remove_tree(d.root)


def tool_ids(d, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.request({"op": "status"})
        for a in st.get("agents", []):
            if a["agent"] == "ag" and len(a["tools"]) >= n:
                return {t["tool_class"]: t["tool"] for t in a["tools"]}
        time.sleep(0.1)
    raise AssertionError(f"tool calls did not start: {d.log()[-3000:]}")


def actions(d):
    return [e for e in d.events() if e.get("event") == "action" and e.get("tool")]


def test_ladder_throttles_freezes_kills_lowest_priority_first(tmp_path, cgfs, hog, figure):
    name = f"agentd-test-{os.getpid()}-ladder"
    d, agent, out = start(tmp_path, name, LADDER_POLICY, LADDER_SCRIPT, hog)
    try:
        tools = tool_ids(d, 2)
        batch, inter = tools["batch"], tools["interactive"]
        status = d.request({"op": "status"})
        assert status["modes"]["pressure"] == "psi-trigger", (status["modes"], d.log()[-2000:])
        d.wait_event(lambda e: e.get("action") == "kill" and e.get("tool") == batch, timeout=60)
        acts = actions(d)
        on_batch = [e["action"] for e in acts if e["tool"] == batch]
        assert on_batch[:3] == ["throttle", "freeze", "kill"], acts
        kill_at = next(i for i, e in enumerate(acts) if e["tool"] == batch and e["action"] == "kill")
        assert not any(e["tool"] == inter for e in acts[:kill_at]), acts
        thr = next(e for e in acts if e["action"] == "throttle")
        assert int(thr["new"]) < int(thr["old"]) if thr["old"] != "max" else True, thr
        # The agent and its interactive call live on; end the call so the agent can finish.
        assert State(out / "inter.state").value() == 32
        assert d.request({"op": "kill", "agent": "ag", "tool": inter})["ok"]
        agent.wait(60)
        assert agent.returncode == 0, agent.stderr.read()
        assert (out / "main.txt").read_text().strip() == "alive"
        err = (out / "batch.err").read_text()
        for phrase in ("is being slowed down", "is paused", "is being killed by agentd"):
            assert phrase in err, err
        res = json.loads((out / "batch.json").read_text().splitlines()[-1])
        assert res["outcome"] == "killed"
        assert [a["action"] for a in res["actions"]][:3] == ["throttle", "freeze", "kill"]
        reactions = [e["after_trigger_s"] for e in acts if e.get("after_trigger_s") is not None]
        first = acts[0]
        figure("PSI event to first ladder action", f"{first.get('after_trigger_s', float('nan')) * 1000:.1f}", "ms")
        figure("PSI event to action, max over steps", f"{max(reactions) * 1000:.1f}", "ms")
        figure("throttle to kill", f"{acts[kill_at]['ts'] - thr['ts']:.2f}", "s")
    finally:
        stop(d, agent, cgfs)


ADMIT_POLICY = """\
version: 1
pressure:
  budget: 200Mi
admission:
  enabled: true
  max_wait_s: 60
"""

ADMIT_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
"$@" tool --mem 150M -- "$HOG" alloc 100 "$OUT/holder.state" 2>"$OUT/holder.err" &
while [ "$(cut -d' ' -f1 "$OUT/holder.state" 2>/dev/null)" != 100 ]; do sleep 0.1; done
AGENTD_FEEDBACK_FILE="$OUT/late.json" "$@" tool --mem 150M -- true 2>"$OUT/late.err"
echo $? > "$OUT/late.rc"
wait
"""


def test_admission_holds_a_call_until_the_running_one_frees_its_memory(tmp_path, cgfs, hog, figure):
    name = f"agentd-test-{os.getpid()}-admit"
    d, agent, out = start(tmp_path, name, ADMIT_POLICY, ADMIT_SCRIPT, hog)
    try:
        holder = tool_ids(d, 1)["normal"]
        d.wait_event(lambda e: e.get("action") == "queue", timeout=60)
        time.sleep(2.0)
        assert not (out / "late.rc").exists(), "the late call ran while the holder held its memory"
        assert d.request({"op": "kill", "agent": "ag", "tool": holder})["ok"]
        wait_for(lambda: (out / "late.rc").exists(), 60, "the late call to run")
        agent.wait(60)
        err = (out / "late.err").read_text()
        assert "[agentd] true is waiting for memory" in err, err
        res = json.loads((out / "late.json").read_text().splitlines()[-1])
        q = next(a for a in res["actions"] if a["action"] == "queue")
        assert q["seconds"] >= 2.0 and not q.get("timed_out"), q
        assert (out / "late.rc").read_text().strip() == "0"
        figure("admission wait (holder killed after >= 2 s)", f"{q['seconds']:.2f}", "s")
    finally:
        stop(d, agent, cgfs)
