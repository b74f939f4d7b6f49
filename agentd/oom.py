"""The kernel OOM killer's order, set to agentd's: tool calls before agents, low priority first.

The pressure ladder acts at PSI or memory-watch speed; a spike that fills the last free
megabytes faster than that still meets the kernel's OOM killer. Left alone, the killer
takes the biggest process, often the agent itself (it holds the conversation, the
repository index, a language server). agentd gives the killer its own order through
/proc/<pid>/oom_score_adj, which the kernel adds (as thousandths of the memory in the OOM
domain) to each process's size when it picks a victim:

- the daemon itself gets DAEMON (the systemd unit's OOMScoreAdjust=, and the daemon sets
  it when started by hand): it is what reacts, so it goes last;
- an agent's own processes get AGENT_MAIN, so the killer takes any tool call first; not
  -1000 (never): with nothing else left, killing the agent beats a cgroup that can neither
  allocate nor shrink;
- a tool call gets 0..1000 by priority, in the ladder's order: the agent's priority first,
  then the tool call's class. Values are inherited by what the call forks.

A value alone does not hold: without CAP_SYS_RESOURCE a process may set its own anywhere
down to its floor (oom_score_adj_min), and the floor moves only when a writer holding
the capability sets a value (fs/proc/base.c __set_oom_adj). A tool call forked from its
agent starts with the agent's floor, -800, so a call that merely raised its own value
could lower it again and be killed after its agent. The daemon, which holds the
capability, writes each call's value itself before the tool runs (the automatic path and
the launcher's held child); that pins the floor, and fork copies it. A launcher starts
the call directly in its cgroup (clone3) and sets the value from inside only where its
own write pins the floor too (it holds the capability) or nothing can (the daemon lacks
it; one start-up warning says so).

Each tool-call cgroup also has memory.oom.group=1: a victim inside a call takes the whole
call (all of a test run's workers), never half of it.
"""

DAEMON = -900
AGENT_MAIN = -800
AGENT_WEIGHT = 0.9                # share of the 0..1000 range the agent's priority spans
TOOL_WEIGHT = 0.1


def tool_adj(agent_priority, tool_priority):
    """oom_score_adj of a tool call: 1000 minus its weighted priority (both 0..1000).

    The agent's priority dominates: on a shared host a paying tenant's test suite outranks a
    free tenant's `git status`. Among one agent's calls the class decides."""
    a = min(max(int(agent_priority), 0), 1000)
    t = min(max(int(tool_priority), 0), 1000)
    return int(round(1000 - AGENT_WEIGHT * a - TOOL_WEIGHT * t))


def main_adj(kill_main_allowed):
    """oom_score_adj of an agent's own processes: protected unless its class allows the kill."""
    return 0 if kill_main_allowed else AGENT_MAIN
