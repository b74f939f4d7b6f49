"""Admission control in a real daemon: a call whose forecast does not fit the budget next
to the running calls waits, is told so, is admitted by priority when room appears, and
its result records the wait."""

import json
import subprocess

from tests.helpers import REPO, DaemonProc, agentd_cmd

POLICY = """\
version: 1
pressure:
  budget: 300Mi
admission:
  enabled: true
  max_wait_s: {max_wait}
  on_timeout: {on_timeout}
# These tests are about `agentd tool`: the agent's own shell commands stay out.
detection:
  enabled: false
"""

SCRIPT = """\
OUT="$1"; shift
# Each step waits for the previous one to be in place, so the order of requests is fixed
# however loaded the host is: holder running, then batch queued, then interactive asks.
"$@" tool --mem 200M -- bash -c "touch '$OUT/holder.started'; sleep 3" 2>"$OUT/holder.err" &
until [ -e "$OUT/holder.started" ]; do sleep 0.05; done
AGENTD_FEEDBACK_FILE="$OUT/batch.json" "$@" tool --class batch --mem 200M -- sleep 1 2>"$OUT/batch.err" &
until grep -q "waiting for memory" "$OUT/batch.err" 2>/dev/null; do sleep 0.05; done
AGENTD_FEEDBACK_FILE="$OUT/inter.json" "$@" tool --class interactive --mem 200M -- sleep 1 2>"$OUT/inter.err" &
wait
"""


def run_agent(tmp_path, test_root, max_wait=30, on_timeout="run", script=SCRIPT):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(max_wait=max_wait, on_timeout=on_timeout))
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy))
    d.start()
    out = tmp_path / "out"
    out.mkdir()
    try:
        r = subprocess.run(agentd_cmd() + ["run", "--name", "adm", "--", "bash", "-c", script, "agent", str(out),
                                           *agentd_cmd()], env=d.env, cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        events = d.events()
        log = d.log()
    finally:
        d.cleanup()
    return r, out, events, log


def test_waiting_calls_are_admitted_by_priority_when_room_appears(tmp_path, test_root):
    r, out, events, log = run_agent(tmp_path, test_root)
    assert r.returncode == 0, (r.stderr, log)
    starts = [e["argv"] for e in events if e.get("event") == "tool_start"]
    classes = [e["tool_class"] for e in events if e.get("event") == "tool_start"]
    # The batch call asked first, but the interactive one (priority 80 > 20) went first.
    assert classes == ["normal", "interactive", "batch"], (starts, log)
    queued = [e for e in events if e.get("event") == "action" and e.get("action") == "queue"]
    assert len(queued) == 2
    for name in ("batch", "inter"):
        err = (out / f"{name}.err").read_text()
        assert "[agentd] sleep is waiting for memory" in err, err
        assert "[agentd] sleep waited" in err and "for memory before starting" in err, err
    inter = json.loads((out / "inter.json").read_text())
    batch = json.loads((out / "batch.json").read_text())
    qi = next(a for a in inter["actions"] if a["action"] == "queue")
    qb = next(a for a in batch["actions"] if a["action"] == "queue")
    # The holder runs 3 s: the interactive call waited for it, the batch call for both.
    assert 1.0 < qi["seconds"] < 10, qi
    assert qb["seconds"] > qi["seconds"] + 0.5, (qb, qi)
    assert "waiting for memory" not in (out / "holder.err").read_text()   # nothing ran before it


def test_wait_is_bounded_and_fail_refuses_the_call(tmp_path, test_root):
    script = """\
OUT="$1"; shift
"$@" tool --mem 200M -- sleep 4 &
sleep 0.5
"$@" tool --mem 200M -- true 2>"$OUT/late.err"; echo $? > "$OUT/late.rc"
wait
"""
    r, out, events, log = run_agent(tmp_path, test_root, max_wait=1, on_timeout="fail", script=script)
    err = (out / "late.err").read_text()
    assert "is waiting for memory" in err and "waited" in err and "none came free" in err, (err, log)
    assert (out / "late.rc").read_text().strip() != "0"
    assert sum(1 for e in events if e.get("event") == "tool_start") == 1
