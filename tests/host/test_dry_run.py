"""A dry-run daemon on the real host kernel: `agentd tool` calls and automatically detected
calls run, and agentd writes nothing that limits, freezes, kills or reorders the OOM killer
(the files and /proc say so), stops nothing at exec, while `agentd report --what-if`
lists what it would have done. The host's cgroup v2 tree has no memory controller: the
kernel tier shows memory.high/max staying "max" (tests/kernel/test_agentd_enforce.py)."""

import json
import os
import subprocess
import sys

from agentd import oom
from agentd.policy.loader import load_policy
from tests.helpers import REPO, DaemonProc, agentd_cmd

# The agent: reads its own oom_score_adj, runs an interactive call through the launcher
# that leaves a straggler (the class kills stragglers), then spawns a plain `sh -c`
# child as Claude Code does and waits for it with WUNTRACED: a stop at exec would be
# reported to it as a stopped child.
AGENT = r'''
import json, os, sys
out, front = sys.argv[1], sys.argv[2:]
READ = ('read -r v </proc/self/oom_score_adj; '
        'while read -r l; do case $l in 0::*) c=$l;; esac; done </proc/self/cgroup; echo "$v $c"')
res = {"main": open("/proc/self/oom_score_adj").read().strip()}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(w, 1)
    os.execvp(front[0], front + ["tool", "--class", "interactive", "--", "sh", "-c",
                                 READ + '; sleep 300 </dev/null >/dev/null 2>&1 & echo "straggler $!"'])
os.close(w)
os.waitpid(pid, 0)
lines = os.read(r, 4096).decode().splitlines()
res["launched"], res["straggler"] = lines[0], int(lines[1].split()[1])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(w, 1)
    os.execvp("sh", ["sh", "-c", READ + "; sleep 0.5"])
os.close(w)
stops = 0
while True:
    got, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        stops += 1
        os.kill(pid, 18)          # SIGCONT: report it, do not hang
        continue
    break
res["auto"], res["auto_pid"], res["auto_stops"] = os.read(r, 4096).decode().strip(), pid, stops
with open(out, "w") as f:
    json.dump(res, f)
'''


def test_dry_run_writes_nothing_and_what_if_lists_the_decisions(tmp_path, test_root, cgfs):
    d = DaemonProc(str(tmp_path), test_root, extra_env={"AGENTD_DRY_RUN": "1"})
    d.start()
    try:
        assert d.request({"op": "status"}).get("modes", {}).get("enforce", "dry-run") == "dry-run"
        out = tmp_path / "agent.json"
        r = subprocess.run(agentd_cmd() + ["run", "--name", "dry", "--", sys.executable, "-S", "-c", AGENT, str(out),
                                           *agentd_cmd()], capture_output=True, text=True, timeout=60, env=d.env,
                           cwd=REPO)
        assert r.returncode == 0, r.stderr + d.log()[-3000:]
        got = json.loads(out.read_text())
        policy = load_policy("default")
        prio = policy.agent_class("normal").priority
        interactive = oom.tool_adj(prio, policy.tool_class("interactive").priority)
        normal = oom.tool_adj(prio, policy.tool_class("normal").priority)
        # No oom_score_adj written: the agent, the launched call and the detected one keep 0.
        assert got["main"] == "0"
        adj, cg = got["launched"].split()
        assert adj == "0" and f"/{test_root}/agents/dry/tools/0001-interactive" in cg   # placed: that is real
        # The detected call was never stopped at exec and never moved: it ran in main.
        adj, cg = got["auto"].split()
        assert adj == "0" and cg.endswith(f"/{test_root}/agents/dry/main")
        assert got["auto_stops"] == 0
        # The straggler the interactive class kills was left running.
        straggler = got["straggler"]
        assert os.path.exists(f"/proc/{straggler}"), "a dry run killed a straggler"
        with open(f"/proc/{straggler}/oom_score_adj") as f:
            assert f.read().strip() == "0"
        # Nothing in agentd's tree is frozen; its cgroups hold no limit other than the kernel's.
        for cg in (test_root, f"{test_root}/agents", f"{test_root}/agents/dry",
                   f"{test_root}/agents/dry/tools/0001-interactive"):
            if cgfs.exists(cg):
                assert "frozen 0" in cgfs.read(cg, "cgroup.events") or "frozen" not in cgfs.read(cg, "cgroup.events")
                assert cgfs.read(cg, "cgroup.freeze").strip() == "0"
                for name in ("memory.high", "memory.max", "cpu.weight", "pids.max"):
                    if cgfs.has(cg, name):
                        assert cgfs.read(cg, name).strip() in ("max", "100"), (cg, name)
        # What it would have done, per tool call.
        rep = subprocess.run(agentd_cmd() + ["report", "--what-if", "--json", "--event-log", d.event_log],
                             capture_output=True, text=True, timeout=30, env=d.env, cwd=REPO)
        assert rep.returncode == 0, rep.stderr
        doc = json.loads(rep.stdout)
        calls = {c["tool"]: c for c in doc["tool_calls"]}
        launched = calls["0001-interactive"]
        assert launched["oom_score_adj"] == interactive and not launched["observed"]
        assert [a["action"] for a in launched["actions"]] == ["kill"]          # the straggler
        auto = next(c for c in calls.values() if c["observed"])
        assert auto["argv"][:2] == ["sh", "-c"] and auto["oom_score_adj"] == normal
        text = subprocess.run(agentd_cmd() + ["report", "--what-if", "--event-log", d.event_log],
                              capture_output=True, text=True, timeout=30, env=d.env, cwd=REPO).stdout
        assert "would kill" in text and "observed only" in text
    finally:
        d.cleanup()
