"""mini-swe-agent (PyPI, unmodified) with its docker environment pointed at podman and its
deterministic test model: each action is a `podman exec <container> bash -lc CMD`.

    python3 mini_podman.py IMAGE OUT [local]

The container is started with `--cgroup-parent=$AGENTD_CONTAINER_PARENT` (what `agentd run`
gives the agent). Each action writes the cgroup its shell ran in (as the container's cgroup
namespace shows it) and that of a child, to OUT/<n>; the last one submits. At exit the
environment stops the container in the background, as mini-swe-agent does.
"""

import os
import sys

import yaml
from minisweagent.agents.default import DefaultAgent
from minisweagent.config import get_config_path
from minisweagent.models.test_models import DeterministicModel, make_output

image, out = sys.argv[1], sys.argv[2]
ACTIONS = [f"grep ^0:: /proc/self/cgroup > /tmp/a{n}; sh -c 'grep ^0:: /proc/self/cgroup' >> /tmp/a{n}; cat /tmp/a{n}"
           for n in range(3)]
ACTIONS.append("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT; echo done")


def reply(cmd):
    return make_output(f"THOUGHT: run it.\n\n```mswea_bash_command\n{cmd}\n```", [{"command": cmd}])


if len(sys.argv) > 3 and sys.argv[3] == "local":
    from minisweagent.environments.local import LocalEnvironment
    env = LocalEnvironment()
else:
    from minisweagent.environments.docker import DockerEnvironment
    env = DockerEnvironment(image=image, executable="podman", timeout=600, pull_timeout=600,
                            run_args=["--rm", f"--cgroup-parent={os.environ['AGENTD_CONTAINER_PARENT']}"])
config = yaml.safe_load(open(get_config_path("default")))["agent"]
agent = DefaultAgent(DeterministicModel(outputs=[reply(a) for a in ACTIONS]), env, **config)
result = agent.run("Report the cgroups.")
n = 0
for m in agent.messages:
    text = m.get("content") if isinstance(m.get("content"), str) else ""
    if m.get("role") in ("user", "tool") and "<returncode>" in text:
        with open(os.path.join(out, str(n)), "w") as f:
            f.write(text)
        n += 1
with open(os.path.join(out, "result"), "w") as f:
    f.write(repr(result))
# What the environment's __del__ does at exit, called here: at interpreter shutdown the
# subprocess module may already be torn down. Its background `podman stop` outlives us.
env.cleanup()
env.container_id = None
