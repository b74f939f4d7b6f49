"""`agentd tool` under a real memory.max: the tool call is OOM-killed as a tool call, the
agent is told why in one sentence, and the agent's main process and the daemon survive."""

import json
import os
import subprocess

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd

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

POLICY = """\
version: 1
admission:
  enabled: false
"""

SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
AGENTD_FEEDBACK_FILE="$OUT/oom.json" "$@" tool --mem 32M -- "$HOG" alloc 256 "$OUT/oom.state" 2>"$OUT/oom.err"
echo $? > "$OUT/oom.rc"
"$@" tool -- true && echo alive > "$OUT/main.txt"
"""


def test_tool_call_oom_killed_agent_and_daemon_survive(tmp_path, cgfs, hog, figure):
    name = f"agentd-test-{os.getpid()}-oom"
    (tmp_path / "policy.yaml").write_text(POLICY)
    d = DaemonProc(str(tmp_path), name, policy=str(tmp_path / "policy.yaml"))
    d.start(timeout=120)
    out = tmp_path / "out"
    out.mkdir()
    try:
        r = subprocess.run(agentd_cmd() + ["run", "--name", "oom", "--", "bash", "-c", SCRIPT, "agent", str(out),
                                           hog, *agentd_cmd()], env=d.env, cwd=REPO, capture_output=True,
                           text=True, timeout=90)
        assert r.returncode == 0, (r.stderr, d.log()[-3000:])
        assert (out / "oom.rc").read_text().strip() == "137"          # 128 + SIGKILL, as a shell shows it
        assert (out / "main.txt").read_text().strip() == "alive"      # the agent went on to its next call
        err = (out / "oom.err").read_text()
        assert "[agentd] hog was killed: it reached its 30.5 MiB limit" in err, err
        res = json.loads((out / "oom.json").read_text().splitlines()[-1])
        assert res["outcome"] == "oom_killed", res
        assert res["memory_events"]["oom_kill"] >= 1
        assert res["memory_peak_bytes"] <= 32_000_000
        assert d.proc.poll() is None and d.request({"op": "hello"})["ok"]
        figure("OOM-killed tool call peak", f"{res['memory_peak_bytes'] / 2**20:.1f}", "MiB")
    finally:
        keep_log(d, "oom")
        d.cleanup()
        if cgfs.exists(name):
            cgfs.kill(name)
            cgfs.wait_empty(name, 30)
            cgfs.remove_tree(name)
