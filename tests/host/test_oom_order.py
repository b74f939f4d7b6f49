"""The kernel OOM killer's order on the real /proc: an agent's processes are protected,
each tool call (through the launcher and through automatic detection) carries the value
of its priority, and what it forks inherits it."""

from agentd import oom
from agentd.kernel.probe import has_capability
from agentd.kernel.procfs import CAP_SYS_RESOURCE
from agentd.policy.loader import load_policy
from tests.helpers import agentd_cmd

# The shell builtin `read` reads /proc/self in the shell itself: no exec, no tool call.
READ = 'read -r v </proc/self/oom_score_adj; echo "{tag}=$v"'


def _values(stdout):
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_agent_is_protected_and_tool_calls_carry_their_priority(daemon):
    policy = load_policy("default")
    agent_prio = policy.agent_class("normal").priority
    script = (READ.format(tag="main") + '; front="$1"; shift; '
              '"$front" "$@" tool --class batch -- sh -c \'' + READ.format(tag="launched")
              + '; sh -c "' + READ.format(tag="grandchild").replace('"', '\\"') + '"\'; '
              'sh -c \'' + READ.format(tag="auto") + '\'; true')
    r = daemon.run(script, *agentd_cmd(), name="oom1")
    assert r.returncode == 0, r.stderr
    got = _values(r.stdout)
    # Lowering a value needs CAP_SYS_RESOURCE: the kernel tier's guest has it, this host's
    # root may not, and then the agent keeps the value it had (0) and a warning says so.
    if has_capability(CAP_SYS_RESOURCE):
        assert int(got["main"]) == oom.main_adj(False)
    else:
        assert int(got["main"]) == 0
        assert "no CAP_SYS_RESOURCE: agents cannot be protected" in daemon.log()
    batch = oom.tool_adj(agent_prio, policy.tool_class("batch").priority)
    assert int(got["launched"]) == batch
    assert int(got["grandchild"]) == batch                  # inherited by what the call forks
    normal = oom.tool_adj(agent_prio, policy.tool_class("normal").priority)
    assert int(got["auto"]) == normal                       # set by the daemon before it runs
    assert oom.main_adj(False) < normal < batch
