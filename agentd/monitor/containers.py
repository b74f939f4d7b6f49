"""Container sandboxes: an agent whose tool calls are `podman exec` into a container it runs.

The exec'd command is no child of the agent: the runtime starts it (conmon runs
`crun exec` / `runc exec`, which puts it in the container's cgroup and execs it there). So
the container is placed where agentd can see it, and its exec sessions are recognised by
the kernel's own facts:

- Each agent has a container parent, `<agent>/containers` (`AGENTD_CONTAINER_PARENT` in its
  environment). Started with `--cgroup-parent=$AGENTD_CONTAINER_PARENT` (podman with the
  cgroupfs manager; docker with its cgroupfs driver), a container's cgroup is a leaf
  below it holding the container's init and what that forks; podman puts the container's
  conmon in `containers/conmon`. The container is the agent's: its memory counts
  against the agent's limits, never against a tool call's.
- The lifecycle program (bpf/lifecycle.bpf.c, AGENTD_WATCH_CONTAINERS on that parent) stops
  a task that execs in a container's cgroup while its parent lives in another cgroup:
  only the runtime enters a container from outside. Inside the container, processes are
  forked by the init or by each other, in the same cgroup, and are left alone.
- Here: the container's init (pid 1 of its pid namespace, NSpid) is resumed where it
  is. Any other such exec is an exec session: it is placed as a tool call of the agent
  (`agents/<id>/tools/NNNN`, created with the class, limits, forecast, OOM order and
  feedback of any automatically detected call, planned from the exec'd argv, e.g.
  `bash -lc CMD`) and resumed. It cannot fork before it is moved, so the whole command
  runs in its call's cgroup; past its memory.max it is OOM-killed alone (memory.oom.group
  of the call), never the container's init, conmon or the agent. The process stays in
  every namespace of the container; only its cgroup is outside the container's.
- When the agent ends while a container of its still runs, or while one of its tool
  calls still runs a container runtime program (mini-swe-agent stops its container with
  a background `podman stop` as it exits), agentd does not break the runtime: those
  calls and the container parent are left to finish, what else is left of the agent is
  killed as before, and the agent's cgroup goes once they are gone.
"""

import logging
import os
import re
import time

from ..errors import AgentdError, CgroupGone, ProcessGone
from ..kernel import bpf_types as T
from ..kernel.bpf_userspace import resume
from .events import ProcKind

log = logging.getLogger(__name__)

CONTAINERS = "containers"       # the agent's container parent, below its cgroup
ENV = "AGENTD_CONTAINER_PARENT"

# Programs of container runtimes: a tool call that still runs one at the agent's end is
# at work on a container (stopping or removing it) and is left to finish.
RUNTIME_PROGRAMS = frozenset({"podman", "docker", "conmon", "crun", "runc", "containerd-shim-runc-v2"})
# ... or whose command line runs a runtime client: its shell may not have exec'd it yet
# (`sh -c "(timeout 60 podman stop ID || podman rm -f ID) &"`, mini-swe-agent's clean-up).
RUNTIME_IN_ARGV = re.compile(r"(?:^|[\s/(;&|])(?:podman|docker)\s")


def _runtime_init(argv):
    """runc (1.1 and older) starts `runc init` outside the container, is moved into its
    cgroup, and may then re-execute itself from a sealed copy (the CVE-2019-5736 guard)
    before it makes the container's namespaces: that exec is the runtime's, not a session's.
    Placing it would take the container's init (or the session's command) with it, and root
    the container's cgroup namespace in a tool call. Its own later exec of the command is
    the one recognised."""
    return len(argv) >= 2 and os.path.basename(argv[0]) in ("runc", "crun") and argv[1] == "init"


def parent_of(agent):
    return f"{agent.cgroup}/{CONTAINERS}"


def env(agent):
    """What the agent's environment gets: the --cgroup-parent value for its containers."""
    return {ENV: "/" + parent_of(agent).strip("/")}


class ContainerExecs:
    """`fs`: kernel.cgroupfs; `procfs`: kernel.procfs; `lifecycle`: the lifecycle program
    (None: no BPF, no exec sessions recognised); `place(agent_id, pid, argv)`: the
    detection hook's placement (a held process becomes a tool call)."""

    def __init__(self, fs, procfs, lifecycle, place, observe=False, resume=resume):
        self.fs = fs
        self.procfs = procfs
        self.lifecycle = lifecycle
        self.place = place
        self.observe = observe
        self.resume = resume
        self._agents = {}          # the agent's watched (root) cgroup id -> agent id
        self._ran = set()          # agents a container ran for (an exec in their container parent)
        self.stats = {"exec_sessions": 0, "inits": 0}
        self.hold_ns = []          # exec -> resumed, of the exec sessions placed (last 1000)

    # --- agents ------------------------------------------------------------------
    def on_agent_start(self, agent, watch_id):
        """`watch_id`: the agent's cgroup id the lifecycle program watches (its events carry
        it), or None without the program."""
        cg = parent_of(agent)
        try:
            self.fs.mkdir(cg)
            self.fs.enable_controllers(cg)
            if self.lifecycle is not None and watch_id:
                flags = T.AGENTD_WATCH_CONTAINERS | (0 if self.observe else T.AGENTD_WATCH_STOP_EXEC)
                self.lifecycle.watch(self.fs.cgroup_id(cg), flags)
                self._agents[watch_id] = agent.agent_id
        except AgentdError as err:
            log.warning("agent %s: container exec sessions not recognised: %s", agent.agent_id, err)

    def on_agent_end(self, agent, watch_id):
        self._agents.pop(watch_id, None)
        self._ran.discard(agent.agent_id)
        if self.lifecycle is not None:
            try:
                self.lifecycle.unwatch(self.fs.cgroup_id(parent_of(agent)))
            except AgentdError:
                pass

    # --- exec sessions -------------------------------------------------------------
    def handle(self, ev):
        if ev.kind != ProcKind.EXEC or not ev.container:
            return
        placed = False
        try:
            agent_id = self._agents.get(ev.watched_id)
            if agent_id is None:
                return
            self._ran.add(agent_id)
            if _runtime_init(ev.argv):
                return                           # the runtime re-executing itself (see below)
            if self.procfs.ns_pid(ev.pid) == 1:
                self.stats["inits"] += 1        # the container's init: it stays in its cgroup
                return
            self.place(agent_id, ev.pid, list(ev.argv))
            self.stats["exec_sessions"] += 1
            placed = True
        except (ProcessGone, CgroupGone):
            pass
        except AgentdError as err:
            log.warning("container exec %d of agent %s not placed: %s", ev.pid, self._agents.get(ev.watched_id),
                        err)
        finally:
            if ev.stopped:
                self.resume(ev.pid)
                if placed:        # what the exec session waited for its cgroup (the path's cost)
                    self.hold_ns.append(time.monotonic_ns() - ev.ts_ns)
                    del self.hold_ns[:-1000]
                try:
                    self.lifecycle.release(ev.pid)
                except AgentdError:
                    pass

    def summary(self):
        """Counters and the hold's median/max in µs (`agentd status`: mode_details)."""
        held = sorted(self.hold_ns)
        return {**self.stats, "hold_median_us": held[len(held) // 2] / 1e3 if held else None,
                "hold_max_us": held[-1] / 1e3 if held else None}

    # --- the agent's end -------------------------------------------------------------
    def at_work(self, agent):
        """What of `agent` the container runtime still owns at its end: (tool ids that run a
        runtime program, whether a container still runs under it). None: nothing.

        What a call's part rests on is what the agent cannot make up: that a container ran
        for it, in its container parent, where only root (a root runtime) can put a
        process. A call's argv and its program's name are the agent's to choose (a copy of
        sleep named docker, `sh -c 'sleep 1d # podman '`): without a container of its own,
        no call of the agent outlives it."""
        try:
            running = self.fs.exists(parent_of(agent)) and self.fs.populated(parent_of(agent))
        except AgentdError:
            running = False
        if not running and agent.agent_id not in self._ran:
            return None
        tools = set()
        for tool in agent.tools.values():
            if not tool.done and (RUNTIME_IN_ARGV.search(" ".join(tool.argv)) or self._runs_runtime(tool.cgroup)):
                tools.add(tool.tool_id)
        return (tools, running) if tools or running else None

    def _runs_runtime(self, cg):
        try:
            pids = self.fs.procs(cg)
        except AgentdError:
            return False
        for pid in pids:
            try:
                if os.path.basename(self.procfs.exe(pid)) in RUNTIME_PROGRAMS:
                    return True
            except AgentdError:
                continue
        return False
