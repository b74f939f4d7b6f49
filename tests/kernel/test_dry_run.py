"""A dry-run daemon on a kernel with the memory controller: the memory.high and memory.max
a daemon gives an agent and its tool call (class limits, the forecast's memory.high) are
written by a normal daemon and stay "max" under a dry run, whose event log has them as
decisions (`agentd report --what-if`)."""

import json
import os
import subprocess

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
agent_classes:
  normal: {memory: {high: 160Mi, max: 192Mi}}
tool_classes:
  normal: {priority: 50, memory: {max: 128Mi}}
detection:
  enabled: false
"""

# The tool call reads the limit files of its own cgroup and of its agent's.
SCRIPT = r"""
OUT="$1"; shift
"$@" tool -- sh -c '
  while read -r l; do case $l in 0::*) cg=${l#0::};; esac; done </proc/self/cgroup
  agent=/sys/fs/cgroup${cg%/tools/*}
  for f in memory.high memory.max; do
    read -r t </sys/fs/cgroup$cg/$f; read -r a <$agent/$f; echo "tool $f $t"; echo "agent $f $a"
  done' >"$OUT"
"""


def _limits(tmp_path, cgfs, name, dry):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    root = f"agentd-test-{os.getpid()}-{name}"
    d = DaemonProc(str(tmp_path / name), root, policy=str(policy),
                   extra_env={"AGENTD_DRY_RUN": "1" if dry else "0"})
    os.makedirs(d.tmp, exist_ok=True)
    d.start(timeout=300)
    try:
        out = tmp_path / f"{name}.txt"
        r = subprocess.run(agentd_cmd() + ["run", "--name", name, "--", "bash", "-c", SCRIPT, "agent", str(out),
                                           *agentd_cmd()], capture_output=True, text=True, timeout=180,
                           env=d.env, cwd=REPO)
        assert r.returncode == 0, r.stderr + d.log()[-3000:]
        got = {" ".join(line.split()[:2]): line.split()[2] for line in out.read_text().splitlines()}
        rep = subprocess.run(agentd_cmd() + ["report", "--what-if", "--json", "--event-log", d.event_log],
                             capture_output=True, text=True, timeout=120, env=d.env, cwd=REPO)
        return got, rep
    finally:
        d.cleanup()
        if cgfs.exists(root):
            cgfs.kill(root)
            cgfs.wait_empty(root, 30)
            cgfs.remove_tree(root)


def test_memory_limits_stay_max_under_a_dry_run_and_are_written_without_one(tmp_path, cgfs, figure):
    real, rep = _limits(tmp_path, cgfs, "real", dry=False)
    assert real["agent memory.max"] == str(192 << 20) and real["agent memory.high"] == str(160 << 20)
    assert real["tool memory.max"] == str(128 << 20)
    assert real["tool memory.high"] != "max"                 # the forecast's
    assert rep.returncode != 0 and "--dry-run" in rep.stderr  # a normal daemon decided nothing dry

    dry, rep = _limits(tmp_path, cgfs, "dry", dry=True)
    assert dry == {k: "max" for k in real}, dry
    assert rep.returncode == 0, rep.stderr
    doc = json.loads(rep.stdout)
    (agent,) = doc["agents"]
    assert agent["limits"]["memory.max"] == str(192 << 20) and agent["limits"]["memory.high"] == str(160 << 20)
    (call,) = doc["tool_calls"]
    assert call["limits"]["memory.max"] == str(128 << 20)
    assert call["limits"]["memory.high"] == real["tool memory.high"]
    figure("dry run: tool call memory.high it would have set", call["limits"]["memory.high"])
