"""detection.agent_programs in a real daemon with the BPF lifecycle program: only children
of the agent's own programs (matched by the basename of the executable or of argv[0]) are
tool calls; children of its other main-cgroup processes stay in main."""

import os
import shutil

from tests.helpers import DaemonProc

POLICY = """\
version: 1
detection:
  agent_programs: [agentprog, myagent]
"""

# a.sh runs as plain bash (not an agent program), then turns into "agentprog" (argv[0]);
# b.sh, as agentprog, turns into a copy of dash named myagent run with argv[0] "other"
# (the executable's name alone matches). Each level leaves one child's cgroup in a file.
A = """\
sh -c 'grep ^0:: /proc/self/cgroup > "$1/plain"' sh "$1"
exec -a agentprog bash "$1/b.sh" "$1"
"""
B = """\
sh -c 'grep ^0:: /proc/self/cgroup > "$1/by_argv0"' sh "$1"
exec -a other "$1/myagent" "$1/c.sh" "$1"
"""
C = """\
sh -c 'grep ^0:: /proc/self/cgroup > "$1/by_exe"' sh "$1"
exit 0
"""


def test_children_of_the_agent_programs_only_are_tool_calls(tmp_path, test_root):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in (("a.sh", A), ("b.sh", B), ("c.sh", C)):
        (out / name).write_text(text)
    shutil.copy("/bin/dash", out / "myagent")
    policy = tmp_path / "agent-programs.yaml"
    policy.write_text(POLICY)
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
    try:
        assert d.request({"op": "status"})["modes"]["detection"] == "bpf-stop"
        r = d.run(f'bash "{out}/a.sh" "{out}"', name="progs")
        assert r.returncode == 0, r.stderr
        agent = f"0::/{test_root}/agents/progs"
        assert (out / "plain").read_text().strip() == f"{agent}/main"
        assert (out / "by_argv0").read_text().strip().startswith(f"{agent}/tools/0001-")
        assert (out / "by_exe").read_text().strip().startswith(f"{agent}/tools/0002-")
        ends = [e for e in d.events() if e["event"] == "tool_end" and e["agent"] == "progs"]
        assert sorted(e["origin"] for e in ends) == ["auto", "auto"], ends
    finally:
        d.cleanup()
