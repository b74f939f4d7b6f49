"""A resize of the memory above agentd's root reaches the agents already running.

A parent cgroup with memory.max = 256 MiB holds agentd's root, as a slice or a container
would; an agent class asks for half of it. The parent grows to 512 MiB while the agent
runs: the daemon's sweep sees the new size, and the running agent's memory.max follows
(what `agentd status` shows too), not only the agents started after.
"""

import os
import subprocess

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel
MiB = 1 << 20

POLICY = """\
version: 1
defaults: {agent_class: half}
agent_classes:
  half: {priority: 500, memory: {max: 50%}}
admission: {enabled: false}
detection: {enabled: false}
cpu: {scheduler: weights}
"""


def test_a_running_agents_percentage_limit_follows_a_resize(tmp_path, cgfs):
    parent = f"agentd-test-{os.getpid()}-resize"
    cgfs.enable_controllers("", ("memory", "cpu", "pids"))
    cgfs.mkdir(parent, exist_ok=False)
    (tmp_path / "policy.yaml").write_text(POLICY)
    d = DaemonProc(str(tmp_path), f"{parent}/agentd", policy=str(tmp_path / "policy.yaml"))
    go = tmp_path / "go"
    agent = None
    try:
        cgfs.enable_controllers(parent, ("memory", "cpu", "pids"))
        cgfs.write(parent, "memory.max", str(256 * MiB))
        d.start(timeout=300)
        agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "r", "--", "sh", "-c",
                                                 'while [ ! -e "$0" ]; do sleep 0.2; done', str(go)],
                                 env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cg = f"{d.root}/agents/r"

        def memory_max():
            return cgfs.read(cg, "memory.max").strip() if cgfs.exists(cg) else None
        wait_for(lambda: memory_max() == str(128 * MiB), 120, "the agent to start with half the parent's 256 MiB")
        cgfs.write(parent, "memory.max", str(512 * MiB))
        wait_for(lambda: memory_max() == str(256 * MiB), 60, "the running agent's memory.max to follow the resize")
        [a] = [a for a in d.request({"op": "status"})["agents"] if a["agent"] == "r"]
        assert a["limits"]["memory.max"] == str(256 * MiB)
        assert f"agent r: memory.max {128 * MiB} -> {256 * MiB}" in d.log()
        go.touch()
        out, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
    finally:
        go.touch()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(30)
        d.cleanup()
        if cgfs.exists(parent):
            cgfs.kill(parent)
            cgfs.wait_empty(parent, 30)
            cgfs.remove_tree(parent)
