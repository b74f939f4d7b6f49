"""Automatic tool-call detection for agents that never call `agentd tool`.

Rule: a process that lives in an agent's `main` cgroup, whose parent also lives there
(an agent main process: the agent itself, or a spawn policy kept as housekeeping), and
that execs, is a tool-call candidate. With `agent_process(ppid)` (the policy's
detection.agent_programs) the parent must also be one of the agent's own programs. The daemon's `is_tool(argv, leads_session)`
(policy) decides; for a tool call the daemon's `place(agent_id, pid, argv)` creates the
tool-call cgroup and moves the pid (the Controller owns the cgroup tree, not this module).

Closing the race in which the tool forks before it is moved, by strategy:
  stop   BPF stops the task at exec (before its first instruction); we place it, then
         SIGCONT it. It cannot fork while stopped, so every descendant is born in the
         tool-call cgroup. Chosen default: bench/autodetect.py measured 100% placement
         under fork storms, at the cost of one event round trip per exec in `main`.
  sweep  BPF reports without stopping; we place the task, then move every descendant
         that was forked meanwhile (tracked from fork events, plus a /proc sweep).
         No added exec latency, but descendants run in `main` until moved: short-lived
         ones are never placed and their usage is charged to the agent.
  poll   no BPF: cgroup.procs of every main cgroup is polled (reconcile()), with the same
         sweep. Detection lags by up to the poll interval.
"""

import logging
import time
from dataclasses import dataclass, field

from ..errors import AgentdError, CgroupGone, ProcessGone
from ..kernel import bpf_types as T
from ..kernel.bpf_userspace import ProcFS, resume
from ..kernel.procfs import own_cgroup
from .events import ProcKind

log = logging.getLogger(__name__)

STRATEGIES = ("stop", "sweep", "poll")


@dataclass
class AutodetectStats:
    placed: int = 0             # tool calls placed
    adopted: int = 0            # descendants moved after their tool (sweep/poll only)
    housekeeping: int = 0       # candidates policy kept in main
    errors: int = 0             # place() or a move failed (not counting vanished processes)
    resumed_late: int = 0       # stopped tasks found by reconcile() (a lost event)
    hold_ns: list = field(default_factory=list)  # exec -> SIGCONT, stop strategy (last 1000)

    def summary(self):
        """Counters plus the hold time's median/max in µs (for status, metrics, doctor)."""
        out = {k: v for k, v in self.__dict__.items() if k != "hold_ns"}
        held = sorted(self.hold_ns)
        out["hold_median_us"] = held[len(held) // 2] / 1e3 if held else None
        out["hold_max_us"] = held[-1] / 1e3 if held else None
        return out


@dataclass
class _Agent:
    agent_id: str
    main: str                   # cgroup path relative to the v2 mount
    main_id: int
    known: dict = field(default_factory=dict)   # pid -> (starttime, argv): main processes seen


class AutoDetector:
    """Feed it ProcEvents (BPF strategies) or call reconcile() periodically (all strategies).

    `lifecycle` (a kernel.bpf_lifecycle.Lifecycle, or None for poll) gets each main
    cgroup registered with the flags the strategy needs.
    """

    def __init__(self, place, is_tool, cgroups, strategy="stop", lifecycle=None, procfs=None, reason="",
                 resume=resume, agent_process=None, exempt=None, observe=False, exempt_file=None,
                 shell=None, kept=None, session_only=None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if strategy != "poll" and lifecycle is None:
            raise ValueError(f"strategy {strategy!r} needs the lifecycle BPF program")
        self.place = place
        self.is_tool = is_tool
        # agent_process(pid) -> bool: is this main-cgroup process one of the agent's own
        # programs, whose children are tool calls? None: every main process is.
        self.agent_process = agent_process
        self.cgroups = cgroups
        self.strategy = strategy
        self.reason = reason or ("BPF lifecycle program attached" if lifecycle else "BPF unavailable")
        self.lifecycle = lifecycle
        self.procfs = procfs or ProcFS()
        self.resume = resume
        # exempt(pid) -> bool: a process that is never a tool call, judged by what the
        # kernel runs (the agentd front: it makes its own tool call), never by its argv.
        self.exempt = exempt
        # observe: report tool calls to `place` and move nothing; no task is stopped at
        # exec (a dry run: `place` only records what would have been).
        self.observe = observe
        self.exempt_file = exempt_file  # observe: exempt(path of the exec'd file), the process may be gone
        # shell(pid) -> bool: is this main process a persistent shell (detection.tool_parents,
        # monitor/shells.py)? Its children are tool calls, leading a session or not.
        self.shell = shell
        self.kept = kept            # kept(pid, argv): a candidate judged no tool call (it stays in main)
        # session_only() -> bool: can only an exec that leads its session be a tool call
        # now (the policy's new_session_only, no persistent shells)? Then the lifecycle
        # program stops only those at exec (AGENTD_WATCH_SESSION_ONLY); the others, never
        # placed, do not wait for the daemon to resume them.
        self.session_only = session_only
        self._flags = None          # the main cgroups' watch flags last registered
        self._observed = set()      # observe: pids recorded as tool calls (until they exit)
        self.stats = AutodetectStats()
        self._agents = {}           # agent_id -> _Agent
        self._by_main = {}          # main cgroup id -> _Agent
        self._tool_of = {}          # pid -> root pid of its tool call
        self._tool_cg = {}          # root pid -> tool cgroup path

    @property
    def mode(self):
        mode = {"stop": "bpf-stop", "sweep": "bpf-sweep", "poll": "poll"}[self.strategy]
        return "bpf-observe" if self.observe and self.strategy != "poll" else mode + ("-observe" if self.observe else "")

    # --- agents -----------------------------------------------------------
    def add_agent(self, agent_id, main_cgroup):
        main_id = self.cgroups.cgroup_id(main_cgroup)
        agent = _Agent(agent_id, main_cgroup, main_id)
        self._agents[agent_id] = agent
        self._by_main[main_id] = agent
        if self.lifecycle is not None:
            if self._watch_flags() == self._flags:
                self.lifecycle.watch(main_id, self._flags)
            else:
                self.refresh_flags()

    def _watch_flags(self):
        flags = T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN
        if self.strategy == "stop" and not self.observe:
            flags |= T.AGENTD_WATCH_STOP_EXEC
            if self.session_only is not None and self.session_only():
                flags |= T.AGENTD_WATCH_SESSION_ONLY
        return flags

    def refresh_flags(self):
        """Register every main cgroup again where the flags it needs changed (a policy
        reload turned new_session_only or persistent shells on or off)."""
        if self.lifecycle is None:
            return
        flags = self._watch_flags()
        if flags == self._flags:
            return
        self._flags = flags
        for agent in list(self._agents.values()):
            self.lifecycle.watch(agent.main_id, flags)

    def remove_agent(self, agent_id):
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            return
        self._by_main.pop(agent.main_id, None)
        if self.lifecycle is not None:
            self.lifecycle.unwatch(agent.main_id)

    # --- BPF events -------------------------------------------------------
    def handle(self, ev):
        if ev.container:
            return                                  # monitor/containers.py places (and resumes) it
        if ev.kind == ProcKind.FORK:
            root = self._tool_of.get(ev.ppid)
            if root is not None:
                self._tool_of[ev.pid] = root
                if ev.cgroup_id in self._by_main:   # born before its parent was moved
                    self._adopt(root, ev.pid)
            return
        if ev.kind == ProcKind.EXIT:
            self._observed.discard(ev.pid)
            root = self._tool_of.pop(ev.pid, None)
            if root == ev.pid:
                self._tool_cg.pop(root, None)
            agent = self._by_main.get(ev.cgroup_id)
            if agent:
                agent.known.pop(ev.pid, None)
            return
        agent = self._by_main.get(ev.cgroup_id)
        try:
            if agent is None:
                return
            if ev.pid in self._tool_of or ev.pid in self._observed:
                return                              # reconcile() already placed it (or recorded it)
            known = agent.known.get(ev.pid)
            if known is not None and known[1] == ev.argv:
                return                              # ... or already judged it housekeeping
            root = self._tool_of.get(ev.ppid)
            if root is not None:                    # a tool's descendant still in main
                self._tool_of[ev.pid] = root
                self._adopt(root, ev.pid)
                return
            if not ev.parent_in_main:               # the agent's own process (re)executing
                agent.known[ev.pid] = (None, ev.argv)
                return
            # Not stopped (the heartbeat was stale when it exec'd), or held past the bound
            # (the exec watchdog has resumed it): it may have forked meanwhile, so its
            # descendants are swept after it is placed, as without stop-at-exec.
            self._consider(agent, ev.pid, list(ev.argv), ev.leads_session, ev.ppid,
                           held=ev.stopped and not self._held_too_long(ev), filename=ev.filename)
        finally:
            if ev.stopped:
                self._resume(ev.pid)
                hold = time.monotonic_ns() - ev.ts_ns
                self.stats.hold_ns.append(hold)
                del self.stats.hold_ns[:-1000]

    def _held_too_long(self, ev):
        bound = getattr(self.lifecycle, "max_age_ns", 0)
        return bool(bound) and time.monotonic_ns() - ev.ts_ns > bound

    def _resume(self, pid):
        self.resume(pid)
        if self.lifecycle is not None:
            try:
                self.lifecycle.release(pid)     # the exec watchdog need not resume it
            except AgentdError as err:
                log.debug("held %d: %s", pid, err)

    def _consider(self, agent, pid, argv, leads_session, ppid=None, held=None, filename=None):
        try:
            # The policy's answer first: it reads nothing, and most of an agent's own
            # commands end there (new_session_only), before the exempt check stats the
            # process's executable (over 9p in the test VM) or agent_programs reads /proc.
            of_shell = bool(self.shell and ppid is not None and self.shell(ppid))
            tool = bool(self.is_tool(argv, leads_session or of_shell)) \
                and not (bool(self.exempt and self.exempt(pid)) or bool(
                    self.observe and filename and self.exempt_file and self.exempt_file(filename))) \
                and (of_shell or self.agent_process is None or ppid is None or bool(self.agent_process(ppid)))
        except Exception:  # policy bugs must not leave a task stopped
            log.exception("is_tool failed for %s; treating %r as housekeeping", agent.agent_id, argv[:3])
            tool = False
        if not tool:
            self.stats.housekeeping += 1
            agent.known[pid] = (None, tuple(argv))
            if self.kept is not None:
                self.kept(pid, argv)
            return
        try:
            self.place(agent.agent_id, pid, argv)
        except (ProcessGone, CgroupGone):
            return
        except AgentdError as err:
            self.stats.errors += 1
            log.warning("placing tool call %d of %s failed: %s", pid, agent.agent_id, err)
            return
        self.stats.placed += 1
        if self.observe:
            self._observed.add(pid)                 # recorded once (an exec in place is the same call)
            agent.known.pop(pid, None)
            return
        agent.known.pop(pid, None)
        self._tool_of[pid] = pid
        if self.strategy != "stop" or held is False:
            for child in self.procfs.descendants(pid):
                self._tool_of[child] = pid
                self._adopt(pid, child, only_from=agent.main)

    def _adopt(self, root, pid, only_from=None):
        """Move `pid` into the cgroup its tool call `root` was placed in."""
        try:
            cg = self._tool_cg.get(root)
            if cg is None:
                cg = self._tool_cg[root] = own_cgroup(root).lstrip("/")
            if only_from is not None and own_cgroup(pid).lstrip("/") != only_from.strip("/"):
                return
            self.cgroups.move(cg, pid)
            self.stats.adopted += 1
        except (ProcessGone, CgroupGone):
            pass
        except AgentdError as err:
            self.stats.errors += 1
            log.warning("moving %d after tool call %d failed: %s", pid, root, err)

    # --- polling ----------------------------------------------------------
    def reconcile(self):
        """One pass over every main cgroup.

        poll strategy: this is the detector. BPF strategies: a safety net that places and
        resumes tasks stopped at exec whose event was lost (ring buffer full).
        """
        seen = set()
        for agent in list(self._agents.values()):
            try:
                pids = self.cgroups.procs(agent.main)
            except CgroupGone:
                continue
            in_main = set(pids)
            seen |= in_main
            for pid in pids:
                try:
                    self._reconcile_one(agent, pid, in_main)
                except (ProcessGone, CgroupGone):
                    agent.known.pop(pid, None)
        if self._observed:
            self._observed &= seen      # observed calls stay in main: gone from there, gone

    def _reconcile_one(self, agent, pid, in_main):
        if pid in self._observed:
            return
        info = self.procfs.info(pid)
        root = self._tool_of.get(info.ppid)
        if root is not None and self.strategy != "stop":
            self._tool_of[pid] = root
            self._adopt(root, pid)
            return
        known = agent.known.get(pid)
        if self.strategy != "poll":
            # Only stopped candidates matter here: running ones were handled from events.
            if info.state != "T" or known is not None or info.ppid not in in_main:
                return
            self.stats.resumed_late += 1
            try:
                self._consider(agent, pid, list(info.argv), info.sid == pid, info.ppid)
            finally:
                self._resume(pid)
            return
        if known is not None and known[1] == info.argv:
            return
        if info.ppid not in in_main:
            agent.known[pid] = (info.starttime, info.argv)
            return
        try:
            parent = self.procfs.info(info.ppid)
        except ProcessGone:
            parent = None
        if parent is not None and parent.argv == info.argv:
            return                  # forked, not yet exec'd: decide once it has
        self._consider(agent, pid, list(info.argv), info.sid == pid, info.ppid)


def for_monitor(monitor, place, is_tool, cgroups, strategy=None, agent_process=None, exempt=None, observe=False,
                exempt_file=None, shell=None, kept=None, session_only=None):
    """The detector the daemon wants for `monitor` (a kernel_events.EventMonitor):
    stop-at-exec when the lifecycle program runs, /proc polling otherwise; subscribed
    to the monitor's process events. The daemon still calls reconcile() on its tick
    (every ~100 ms in poll mode; ~1 s is enough as a safety net in BPF mode) and once
    at start, which resumes tasks a previous daemon left stopped."""
    if monitor.lifecycle is not None:
        det = AutoDetector(place, is_tool, cgroups, strategy=strategy or "stop", lifecycle=monitor.lifecycle,
                           reason=monitor.reason, agent_process=agent_process, exempt=exempt, observe=observe,
                           exempt_file=exempt_file, shell=shell, kept=kept, session_only=session_only)
        monitor.proc_listeners.append(det.handle)
    else:
        det = AutoDetector(place, is_tool, cgroups, strategy="poll", reason=monitor.reason,
                           agent_process=agent_process, exempt=exempt, observe=observe,
                           exempt_file=exempt_file, shell=shell, kept=kept)
    return det
