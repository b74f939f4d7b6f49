"""Automatic tool-call detection wired into the daemon.

Agents that never call `agentd tool` (Claude Code, mini-swe-agent: a new `bash -c` /
`sh -c` per tool call, a direct child of the agent) still get a cgroup per tool call.
The event monitor (BPF lifecycle program, or /proc polling where BPF is unavailable)
reports execs in each agent's `main` cgroup; the detector asks the Recogniser
(recognise.py: the policy's detection section, the agentd front) and calls `place`, which creates the tool-call cgroup through the
controller. With BPF the new process is held stopped at exec until it is placed, so
nothing it forks starts outside (see bpf/README.md). A dry-run daemon only observes: the
lifecycle program reports execs without stopping them, and a call that would have been
placed is recorded, not moved.
"""

import asyncio
import logging
import time

from ..errors import AgentdError
from ..stages import Stage
from .recognise import Front, Recogniser

log = logging.getLogger("agentd.detect")


class DetectionHook(Stage):
    name = "detect"

    def __init__(self, app, monitor=None):
        from .autodetect import for_monitor
        from .kernel_events import EventMonitor
        self.app = app
        self.monitor = monitor if monitor is not None else EventMonitor(app.fs)
        from ..install import launcher_path
        self.front = Front(app.procfs, launcher_path())
        from .shells import PersistentShells
        self.shells = PersistentShells(lambda: app.policy, app.procfs, self.monitor.lifecycle)
        self.recognise = Recogniser(lambda: app.policy, app.procfs, self.shells)
        # A dry run observes: no task is stopped at exec, none is moved; each call that
        # would have been placed is recorded (Controller.observe_tool).
        self.observe = bool(getattr(app, "dry_run", False))
        self.detector = for_monitor(self.monitor, self.place_detected, self.recognise.is_tool, app.fs,
                                    agent_process=self.recognise.is_agent_process, exempt=self.front.runs,
                                    observe=self.observe, exempt_file=self.front.is_file,
                                    shell=self.shells.is_shell, kept=self.shells.kept,
                                    session_only=lambda: (app.policy.detection.new_session_only
                                                          and not self.shells.enabled()))
        from .containers import ContainerExecs
        self.containers = ContainerExecs(app.fs, app.procfs, self.monitor.lifecycle, self.place_detected,
                                         observe=self.observe)
        self.monitor.proc_listeners.append(self.containers.handle)
        self._tools_by_pid = {}        # root pid of an automatic tool call -> ToolCall
        self._tools_by_cgid = {}       # cgroup id of a running tool call -> ToolCall (exec checks)
        self._exec_root = {}           # tool key -> the pid whose execs say what the call runs
        self._exec_checked = set()     # tool keys whose root process was found by polling
        self._watch_ids = {}           # agent -> cgroup id the lifecycle program watches
        self.monitor.proc_listeners.append(self._on_proc)
        self._task = None
        self._beat_task = None
        self.watchdog = None          # the exec watchdog process (kernel/exec_watchdog.py)
        self.stats = {"placed": 0, "housekeeping": 0}
        self._beat()                  # before re-adoption registers agents for stop-at-exec

    @property
    def policy(self):
        return self.app.policy.detection

    def place_detected(self, agent_id, pid, argv):
        agent = self.app.ctl.agents.get(agent_id)
        if agent is None:
            return
        grace = self.policy.startup_grace_s
        if grace and time.time() - agent.created < grace:
            return                    # the agent's start-up spawns are housekeeping
        if self.observe:
            self.app.ctl.observe_tool(agent, pid, argv)
            self.stats["placed"] += 1
            return
        # Held by a pidfd from here: the move and the oom_score_adj write check that the
        # pid still names the process the event was about.
        job = self.shells.job(pid, agent_id)   # a persistent shell's pipeline joins its agent's running call
        with self.app.procfs.hold(pid) as proc:
            if job is not None:
                self.app.ctl.attach(job, proc)
                return
            tool = self.app.ctl.start_tool(agent, proc, argv, origin="auto")
        self.shells.placed(pid, tool)
        self._tools_by_pid[pid] = tool
        self.stats["placed"] += 1

    # --- what a tool call really runs ------------------------------------------------
    def trusts_declared(self):
        """Does the policy take a client's word for what its tool call runs? Where it does
        not honour declared classes, it does not honour declared argv either: the call is
        classified again from what the kernel says it execs."""
        return self.app.policy.defaults.honour_declared_class

    def on_tool_start(self, agent, tool):
        if tool.origin != "auto" and tool.cgroup_id is not None:
            self._tools_by_cgid[tool.cgroup_id] = tool

    def _exec_in_tool(self, tool, pid):
        """A process of `tool` exec'd. The call's first exec, and every later exec of that
        same process, say what the call runs; its children's do not (git runs a pager)."""
        root = self._exec_root.get(tool.key)
        if root is None:
            if self.front.runs(pid):
                return                 # the launcher's held child before its exec
            self._exec_root[tool.key] = root = pid
        if pid != root or tool.done or self.trusts_declared():
            return
        try:
            argv = self.app.procfs.running_argv(pid)
            self.app.ctl.reclassify(tool, argv, "classified from what it execs")
        except AgentdError as err:
            log.debug("tool %s: exec of %d not checked: %s", tool.key, pid, err)

    def _check_tools_polled(self):
        """Without BPF exec events: the root process of each launcher-started call whose
        exec has not been seen, found in its cgroup (the process whose parent is not there)."""
        if self.trusts_declared():
            return
        fs, procfs = self.app.fs, self.app.procfs
        for tool in list(self._tools_by_cgid.values()):
            agent = self.app.ctl.agents.get(tool.agent_id)
            if agent is not None and self._watch_ids.get(agent.agent_id) and self.monitor.lifecycle is not None:
                continue               # its execs come as BPF events
            if tool.done or tool.key in self._exec_checked:
                continue
            try:
                pids = set(fs.procs(tool.cgroup))
                roots = [p for p in pids if procfs.ppid(p) not in pids]
            except AgentdError:
                continue
            for pid in roots[:1]:
                if self.front.runs(pid):
                    continue           # still the held child, not yet exec'd
                self._exec_checked.add(tool.key)
                self._exec_in_tool(tool, pid)

    def _on_proc(self, ev):
        from .events import ProcKind
        if ev.kind == ProcKind.EXEC:
            tool = self._tools_by_cgid.get(ev.cgroup_id)
            if tool is not None:
                self._exec_in_tool(tool, ev.pid)
            return
        if ev.kind != ProcKind.EXIT:
            return
        self.shells.exited(ev.pid)
        tool = self._tools_by_pid.pop(ev.pid, None)
        if tool is not None and not tool.done:
            code = ev.exit_code
            tool.run.exit_status = {"exit": code} if code is not None else {"signal": ev.status & 0x7F}

    # --- daemon hooks ----------------------------------------------------------------
    def on_agent_start(self, agent):
        enabled = self.policy.enabled
        if not enabled and self.trusts_declared():
            return
        try:
            if enabled:
                self.detector.add_agent(agent.agent_id, agent.main_cgroup)
            if self.monitor.lifecycle is not None:
                # The agent's whole subtree, so the exits of its tool calls are seen (their
                # exit status is known only to the agent, which reaps them), and their execs.
                self._watch_ids[agent.agent_id] = self.app.fs.cgroup_id(agent.cgroup)
                self.monitor.lifecycle.watch(self._watch_ids[agent.agent_id])
        except AgentdError as err:
            log.warning("automatic detection off for agent %s: %s", agent.agent_id, err)
        self.containers.on_agent_start(agent, self._watch_ids.get(agent.agent_id))

    def before_agent_end(self, agent):
        """Read what the lifecycle program still holds before the agent is forgotten: an
        exec that stopped nothing (a dry run observes) is reported in a batch, up to a
        drain interval late, and would find its agent gone."""
        self._drain()

    def runtime_at_work(self, agent):
        """At the agent's end: what a container runtime still does for it (Controller)."""
        return self.containers.at_work(agent)

    def on_agent_end(self, agent):
        watch_id = self._watch_ids.pop(agent.agent_id, None)
        self.containers.on_agent_end(agent, watch_id)
        self.detector.remove_agent(agent.agent_id)
        if self.monitor.lifecycle is not None and watch_id:
            try:
                self.monitor.lifecycle.unwatch(watch_id)
            except AgentdError:
                pass

    def on_tool_end(self, agent, tool, result):
        self.shells.ended(tool)
        self._tools_by_pid.pop(tool.pid, None)
        self._tools_by_cgid.pop(tool.cgroup_id, None)
        self._exec_root.pop(tool.key, None)
        self._exec_checked.discard(tool.key)

    # --- dead-man switch (see bpf/lifecycle.bpf.c) ---------------------------------
    def _beat(self):
        lc = self.monitor.lifecycle
        if lc is not None:
            lc.beat(self.policy.stop_timeout_s)

    async def _heartbeat(self):
        """Beats from the event loop itself: a stopped or wedged loop stops the beat, and
        the program then stops no more execs. The bound follows policy reloads."""
        while True:
            try:
                self._beat()
            except Exception:
                log.exception("writing the detection heartbeat failed")
            await asyncio.sleep(min(0.2, self.policy.stop_timeout_s / 4))

    def _start_watchdog(self):
        from ..kernel import exec_watchdog
        try:
            self.watchdog = exec_watchdog.spawn(self.monitor.lifecycle.watchdog_fds())
        except (OSError, AgentdError) as err:
            # Without it a task stopped just before a daemon hang waits for the daemon.
            log.warning("exec watchdog not started (tasks stopped at exec depend on the daemon alone): %s", err)

    def _stop_watchdog(self):
        if self.watchdog is not None:
            self.watchdog.terminate()
            try:
                self.watchdog.wait(5)
            except Exception:
                self.watchdog.kill()
            self.watchdog = None

    def _release_held(self):
        """Resume every task still held stopped: nobody places them once we are gone."""
        from ..kernel.bpf_userspace import resume
        lc = self.monitor.lifecycle
        try:
            for pid in lc.held():
                resume(pid)
                lc.release(pid)
        except AgentdError as err:
            log.warning("resuming tasks stopped at exec on shutdown: %s", err)

    def _resume_left_stopped(self):
        """Detection is off now, but a previous daemon (with it on) may have left children
        of agent processes stopped at exec, and its exec watchdog died with it: resume them
        unplaced (the same test the detector's reconcile() applies)."""
        from ..kernel.bpf_userspace import resume
        for agent in list(self.app.ctl.agents.values()):
            try:
                pids = set(self.app.fs.procs(agent.main_cgroup))
            except AgentdError:
                continue
            for pid in pids:
                try:
                    info = self.app.procfs.info(pid)
                except AgentdError:
                    continue
                if info.state == "T" and info.ppid in pids:
                    log.info("resuming %d, left stopped at exec in %s's main cgroup", pid, agent.agent_id)
                    resume(pid)

    async def start(self):
        loop = asyncio.get_running_loop()
        fd = self.monitor.fileno()
        if fd is not None:
            loop.add_reader(fd, self._drain)
        if self.monitor.lifecycle is not None:
            self._start_watchdog()
            self._beat_task = asyncio.create_task(self._heartbeat())
        # Resume anything a previous daemon left stopped (placing it when detection is on),
        # then keep a safety net running.
        if self.policy.enabled:
            self.detector.reconcile()
        else:
            self._resume_left_stopped()
        self._task = asyncio.create_task(self._tick(0.1 if fd is None else 1.0))

    def before_sweep(self):
        self._drain()

    def _drain(self):
        try:
            self.monitor.on_readable()
        except Exception:
            log.exception("reading BPF events failed")

    async def _tick(self, interval):
        while True:
            await asyncio.sleep(interval)
            try:
                self.monitor.tick()
                self.detector.refresh_flags()      # a reload may have changed what is stopped at exec
                self.detector.reconcile()
                self._check_tools_polled()
            except Exception:
                log.exception("detection tick failed")

    async def stop(self):
        if self._task:
            self._task.cancel()
        if self._beat_task:
            self._beat_task.cancel()
        fd = self.monitor.fileno()
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
        if self.monitor.lifecycle is not None:
            self._drain()
            self._stop_watchdog()
            self._release_held()
        self.monitor.close()

    def metric_stats(self):
        """What the metrics collector reads at scrape time (agentd/metrics/collector.py)."""
        mon = self.monitor
        progs = {"lifecycle": mon.lifecycle is not None, "memwatch": mon.mem_mode == "bpf"}
        events = {}
        if mon.lifecycle is not None:
            try:
                events["lifecycle"] = dict(mon.lifecycle.stats())
            except Exception:         # a failed read omits samples, never fails the scrape
                pass
        st = self.detector.stats
        auto = {k: getattr(st, k) for k in ("placed", "adopted", "housekeeping", "errors", "resumed_late")}
        return {"bpf_programs": progs, "bpf_events": events, "autodetect": auto}

    def modes(self):
        """The mode name only: it becomes a metric label (agentd_mode_info), so it must
        stay one of a few words; counts are agentd_autodetect_total, details mode_details()."""
        return {"detection": self.detector.mode if self.policy.enabled else "off"}

    def mode_details(self):
        """Why this mode, and the detector's counters, for `agentd status` (never a label)."""
        return {"detection": {"mode": self.modes()["detection"], "reason": self.detector.reason,
                              "enabled": self.policy.enabled, **self.detector.stats.summary()},
                "containers": self.containers.summary()}


def build(app):
    return DetectionHook(app)
