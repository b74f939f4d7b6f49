"""Persistent shells: agents that type their tool calls into one long-lived shell.

SWE-agent's runtime (SWE-ReX) starts one `bash` per agent (`/usr/bin/env bash` on a pty,
a child of the agent) and writes each command into it, so a command's processes are
children of that shell, not of the agent. With `detection.tool_parents` naming the shell
(argv matches, e.g. `{argv_regex: '^(/usr/bin/env )?(/bin/|/usr/bin/)?bash$'}`):

- the shell is no tool call: its exec matches, so it stays in the agent's main cgroup
  (stop-at-exec sees it first, as a child of the agent);
- it counts as an agent process: each child it forks that execs is a tool-call
  candidate, placed like any other (stopped at exec, moved, resumed), whatever
  `agent_programs` lists, and whether or not it leads a session (a shell's jobs share
  the shell's session, so `new_session_only` cannot apply to them);
- processes of one command share one call: a shell with job control (interactive, on a
  pty, as SWE-ReX's is) gives each pipeline a process group of its own, so a child
  whose process group is that of a running call of the same shell joins that call
  (`a | b` is one call). Without job control every child is a call of its own.

What runs inside the shell itself (builtins: `cd`, `export`, `echo`) makes no process and
no tool call: its cost is the shell's, charged to the agent.
"""

import logging

from ..errors import AgentdError
from ..policy.match import matches

log = logging.getLogger(__name__)


class PersistentShells:
    """`policy()` returns the current policy (reloads apply); `procfs` reads argv and
    process groups (kernel.procfs.ProcFS or a fake)."""

    def __init__(self, policy, procfs, lifecycle=None):
        self.policy = policy
        self.procfs = procfs
        self.lifecycle = lifecycle  # kernel.bpf_lifecycle.Lifecycle, or None (/proc polling)
        self._jobs = {}            # (session, process group) -> ToolCall
        self._shells = set()       # pids registered with the lifecycle program

    def kept(self, pid, argv):
        """A main process the detector kept in main: a shell's children are reported from
        now on without the stop at exec, which its job control would see as a stopped job
        (bpf/agentd.h, `shells`); they are placed right after their exec, their forks
        followed (the detector's sweep)."""
        if self.lifecycle is None or pid in self._shells or not self.is_shell_argv(argv):
            return
        try:
            self.lifecycle.add_shell(pid, self.procfs.info(pid).starttime)
            self._shells.add(pid)
        except AgentdError as err:
            log.warning("persistent shell %d: its commands will be stopped at exec: %s", pid, err)

    def exited(self, pid):
        if pid in self._shells:
            self._shells.discard(pid)
            try:
                self.lifecycle.remove_shell(pid)
            except AgentdError:
                pass

    def enabled(self):
        return bool(self.policy().detection.tool_parents)

    def is_shell_argv(self, argv):
        """Does this argv start a persistent shell (then it is no tool call)?"""
        return bool(argv) and any(matches(m, list(argv)) for m in self.policy().detection.tool_parents)

    def is_shell(self, pid):
        """Is `pid` (a main-cgroup process, the parent of a candidate) a persistent shell?
        A forked subshell that has not exec'd has the shell's argv and counts too: what it
        runs is part of the agent's commands as well."""
        if not self.enabled():
            return False
        try:
            return self.is_shell_argv(self.procfs.cmdline(pid))
        except AgentdError:
            return False

    def _key(self, pid):
        """(session, process group) of a shell's job with a group of its own, else None.
        The interactive shell leads its session (pexpect's pty); its jobs' groups differ
        from the session id, and a pipeline's subshells keep their job's group."""
        info = self.procfs.info(pid)
        return (info.sid, info.pgid) if info.pgid != info.sid else None

    def job(self, pid, agent_id):
        """The running tool call of agent `agent_id` that `pid`, a child of a shell in that
        agent, joins (the same pipeline), or None: it starts a call of its own.

        The key is what the process says of itself (session and process group, which any
        process may set within its session): two agents started from one terminal share
        its session, so a process of one could name a job of the other's. It joins only a
        call of its own agent, the one whose cgroup the kernel says it is in."""
        if not self._jobs:
            return None
        try:
            key = self._key(pid)
        except AgentdError:
            return None
        tool = self._jobs.get(key) if key else None
        if tool is not None and tool.done:
            self._jobs.pop(key, None)
            return None
        if tool is not None and tool.agent_id != agent_id:
            return None
        return tool

    def placed(self, pid, tool):
        """`pid`, a child of a shell, started `tool`: its pipeline's other processes join."""
        if not self.enabled():
            return
        try:
            if not self.is_shell(self.procfs.info(pid).ppid):
                return
            key = self._key(pid)
        except AgentdError as err:
            log.debug("shell job of %d: %s", pid, err)
            return
        if key:
            self._jobs[key] = tool

    def ended(self, tool):
        for key in [k for k, t in self._jobs.items() if t is tool]:
            del self._jobs[key]
