"""detection.tool_parents with the real SWE-ReX local runtime (SWE-agent's: one persistent
`bash` per agent, each command typed into it) under `agentd run`, with the BPF lifecycle
program: each command is its own tool call (a pipeline's processes and a group's subshell
share theirs), the shell itself stays in the agent's main cgroup, and a builtin makes no
call.

A shell's own children are placed right after their exec, not stopped (its job control
would see the stop): each command here sleeps before it looks at its cgroup, so that what
it forks is born after its placement (README: a command that ends within the placement
latency may run its course in main)."""

import sys
import textwrap

from tests.helpers import DaemonProc

POLICY = """\
version: 1
detection:
  agent_programs: [python3]
  tool_parents:
    - {argv_regex: '^(/usr/bin/env )?(/bin/|/usr/bin/)?bash$'}   # SWE-ReX's session shell
"""

AGENT = textwrap.dedent("""\
    import asyncio, sys
    from swerex.runtime.local import LocalRuntime
    from swerex.runtime.abstract import BashAction, CloseBashSessionRequest, CreateBashSessionRequest

    OUT = sys.argv[1]
    COMMANDS = [
        f"grep ^0:: /proc/$$/cgroup > {OUT}/shell",                  # the shell's own cgroup
        f"sh -c 'sleep 1; grep ^0:: /proc/self/cgroup' > {OUT}/one",
        f"cd {OUT}",                                                  # a builtin: no process
        f"sh -c 'sleep 1; grep ^0:: /proc/self/cgroup' | {{ cat; grep ^0:: /proc/self/cgroup; }} > {OUT}/pipe",
        f"sh -c 'sleep 1; grep ^0:: /proc/self/cgroup' > {OUT}/two",
    ]

    async def main():
        rt = LocalRuntime()
        await rt.create_session(CreateBashSessionRequest(startup_timeout=30))
        for cmd in COMMANDS:
            obs = await rt.run_in_session(BashAction(command=cmd, timeout=30))
            assert obs.exit_code == 0, (cmd, obs)
        await rt.close_session(CloseBashSessionRequest())

    asyncio.run(main())
    """)


def test_each_command_typed_into_a_swe_rex_shell_is_its_own_tool_call(tmp_path, test_root):
    import swerex  # noqa: F401  (the test extra: .ci/setup.sh installs it)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "agent.py").write_text(AGENT)
    policy = tmp_path / "shells.yaml"
    policy.write_text(POLICY)
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
    try:
        assert d.request({"op": "status"})["modes"]["detection"] == "bpf-stop"
        import subprocess
        from tests.helpers import REPO, agentd_cmd
        r = subprocess.run(agentd_cmd() + ["run", "--name", "rex", "--", sys.executable, str(tmp_path / "agent.py"),
                                           str(out)], capture_output=True, text=True, timeout=120, env=d.env, cwd=REPO)
        assert r.returncode == 0, r.stderr
        agent = f"0::/{test_root}/agents/rex"
        assert (out / "shell").read_text().strip() == f"{agent}/main"
        one = (out / "one").read_text().strip()
        pipe = (out / "pipe").read_text().split()
        two = (out / "two").read_text().strip()
        assert one.startswith(f"{agent}/tools/"), one
        assert len(pipe) == 2 and pipe[0] == pipe[1] and pipe[0].startswith(f"{agent}/tools/"), pipe
        assert two.startswith(f"{agent}/tools/"), two
        assert len({one, pipe[0], two}) == 3, (one, pipe, two)
        ends = [e for e in d.events() if e["event"] == "tool_end" and e["agent"] == "rex"]
        # The pipeline's call is named by whichever of its processes was placed first.
        assert len([e for e in ends if e["argv"][:2] == ["sh", "-c"]]) >= 2 and len(ends) >= 3, ends
        assert all(e["origin"] == "auto" for e in ends), ends
    finally:
        d.cleanup()
