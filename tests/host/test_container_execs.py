"""The container path's kernel rule on the host's cgroup v2, with the BPF lifecycle program
and a stand-in runtime (no podman here: the host's controllers are cgroup v1's; the real
runtimes run in the kernel tier, tests/kernel/test_containers.py):

- a "container" is a cgroup below the agent's container parent (`containers/`), entered
  from outside the way runc/crun do it: a process writes itself into it, then execs;
- its init (pid 1 of a new pid namespace, from `unshare --pid --fork`) stays there, and
  so does what the init runs (its children are born in the container's cgroup);
- a process that enters it from outside and execs (an exec session) becomes a tool call
  of the agent, with what it forks;
- at the agent's end the running "container" is not killed; the agent's cgroup goes once
  the container has ended."""

import os
import subprocess
import time

from tests.helpers import REPO, DaemonProc, agentd_cmd, cgroup2_mount


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_exec_entering_a_container_cgroup_is_a_tool_call_and_the_container_outlives_the_agent(
        tmp_path, test_root):
    mount = cgroup2_mount()
    out = tmp_path / "out"
    out.mkdir()
    d = DaemonProc(str(tmp_path), test_root).start()
    init = None
    try:
        agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "box", "--", "sh", "-c",
                                                 'echo "$AGENTD_CONTAINER_PARENT" > "$1/parent"; '
                                                 'while [ ! -e "$1/go" ]; do sleep 0.05; done', "agent", str(out)],
                                 env=d.env, cwd=REPO)
        _wait(lambda: (out / "parent").exists() and (out / "parent").read_text().strip(), 20, "the agent")
        parent = (out / "parent").read_text().strip()
        assert parent == f"/{test_root}/agents/box/containers"
        ctr = f"{mount}{parent}/fake"
        os.mkdir(ctr)
        # The init: pid 1 of its namespace, enters from outside, execs; then runs a child.
        init = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "sh", "-c",
             'echo 0 > "$1/cgroup.procs" && exec sh -c \'sh -c "grep ^0:: /proc/self/cgroup > $2/inner"; '
             'exec sleep 600\' init "$1" "$2"', "sh", ctr, str(out)])
        _wait(lambda: (out / "inner").exists() and (out / "inner").read_text(), 20, "the container's init")
        # An exec session: enters from outside (its parent is not in the container), execs.
        r = subprocess.run(["sh", "-c", 'echo 0 > "$1/cgroup.procs" && exec sh -c '
                                        '\'sleep 0.2; grep ^0:: /proc/self/cgroup > "$0/exec"\' "$2"',
                            "sh", ctr, str(out)], timeout=30)
        assert r.returncode == 0
        box = f"0::/{test_root}/agents/box"
        assert (out / "inner").read_text().strip() == f"{box}/containers/fake"
        assert (out / "exec").read_text().strip().startswith(f"{box}/tools/"), (out / "exec").read_text()
        with open(f"/proc/{init.pid}/task/{init.pid}/children") as f:
            pid1 = int(f.read().split()[0])
        with open(f"/proc/{pid1}/cgroup") as f:
            assert f.read().strip().splitlines()[-1] == f"{box}/containers/fake"
        held = d.request({"op": "status"})["mode_details"]["containers"]
        assert held["exec_sessions"] == 1 and held["inits"] == 2 and held["hold_max_us"] > 0, held
        starts = [e for e in d.events() if e["event"] == "tool_start" and e["agent"] == "box"]
        ctr_calls = [e["argv"] for e in starts if e["argv"][:1] != ["sleep"] or e["argv"] == ["sleep", "600"]]
        assert len(ctr_calls) == 1 and "grep" in ctr_calls[0][2], ctr_calls  # the session, not the init
        # The agent ends; its container runs on, and so does the agent's cgroup, until it ends.
        (out / "go").write_text("")
        assert agent.wait(30) == 0
        time.sleep(1.5)                                                      # a few sweeps
        assert os.path.exists(f"/proc/{pid1}") and os.path.isdir(ctr)
        init.kill()
        init.wait(10)
        _wait(lambda: not os.path.exists(f"{mount}/{test_root}/agents/box"), 30, "the agent's cgroup to go")
        assert any(e["event"] == "agent_end" and e["agent"] == "box" for e in d.events())
    finally:
        if init is not None and init.poll() is None:
            init.kill()
            init.wait(10)
        d.cleanup()
