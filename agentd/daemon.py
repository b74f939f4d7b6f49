"""The one place that builds and wires agentd's objects, and the asyncio main loop.

Data flows one way: kernel (cgroupfs, PSI, BPF) -> monitor -> forecast -> policy ->
enforce -> metrics / API / event log. `App` owns one of each and serves the API.
The same App runs as the system daemon (`agentd daemon`) and, in standalone mode,
inside `agentd run` for a single agent tree.
"""

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import time

from . import filemodes, oom, sdnotify
from .adopt import readopt
from .api.ops import ApiOps
from .api.guard import raise_fd_limit
from .api.server import Server
from .controller import Controller
from .errors import AgentdError, FeatureMissing, KernelError, PolicyError
from .eventlog import EventLog
from .kernel import blkio, cgroupfs, probe
from .kernel.procfs import ProcFS, host_meminfo
from .monitor.sampler import Sampler
from .policy.planner import Planner
from .state import StateStore

log = logging.getLogger("agentd")

DEFAULT_SOCKET = "/run/agentd/agentd.sock"


@dataclasses.dataclass
class Config:
    policy: str = "default"
    root: str | None = None           # relative to the v2 mount; None = from policy / auto
    socket: str | None = None
    api_group: str | None = None
    metrics_listen: str | None = None  # None: the policy's; "" off; else "host:port" (normalise_listen)
    state_dir: str | None = None
    event_log: str | None = None
    standalone: bool = False
    dry_run: bool = False              # enforcement decides and logs, writes nothing
    sample_interval_s: float = 0.5
    sweep_interval_s: float = 1.0


def host_memory():
    return host_meminfo()[0]


def rss_sampler(pids):
    """Sum of RSS of `pids`: the memory figure on hosts without the memory controller."""
    return ProcFS().rss_total(pids)


def started_by_systemd():
    """systemd started this process as a service's main process: it sets INVOCATION_ID and is
    our parent. A daemon started from a shell inside some service inherits INVOCATION_ID
    only, and is placed like one started by hand."""
    return bool(os.environ.get("INVOCATION_ID")) and os.getppid() == 1


class App(ApiOps):
    def __init__(self, cfg):
        self.cfg = cfg
        self.procfs = ProcFS()
        self.loop = None
        self.stopping = None
        self.ready = threading.Event()
        self.started = time.time()
        self.hooks = []

    # --- build ----------------------------------------------------------------
    def build(self):
        from .policy.loader import load_policy
        mount = cgroupfs.find_cgroup2_mount()
        if os.geteuid() != 0:
            raise FeatureMissing("agentd must run as root to manage cgroups: run it with sudo")
        if not mount:
            raise FeatureMissing(
                "no cgroup v2 hierarchy is mounted: agentd needs cgroup v2. Boot with "
                "systemd.unified_cgroup_hierarchy=1, or mount one: mount -t cgroup2 none /sys/fs/cgroup/unified")
        self.host_memory = host_memory()
        self.policy = load_policy(self.cfg.policy, host_memory_bytes=self.host_memory, block_device=blkio.resolve)
        d = self.policy.daemon
        c = self.cfg
        from .placement import decide
        try:
            own = self.procfs.cgroup(os.getpid())
        except KernelError:
            own = ""                  # no v2 membership: placed like a daemon started by hand
        self.placement = decide(own, started_by_systemd() and not c.standalone,
                                c.root or (d.root if d.root != "auto" else None))
        self.root = self.placement.root
        self.socket_path = c.socket or os.environ.get("AGENTD_SOCKET_LISTEN") or d.socket
        self.fs = cgroupfs.CgroupFS(mount)
        self.fs.makedirs(self.root)
        self._size_memory()
        self.caps = probe.probe(mount, test_cgroup=self.root)
        self.events = EventLog(c.event_log if c.event_log is not None else d.event_log)
        state_dir = c.state_dir if c.state_dir is not None else d.state_dir
        if c.standalone:
            # A standalone tree lives and dies with its `agentd run`: nothing to re-adopt,
            # so no state journal (two runs at once would write the same one). What
            # persists is the tool-call history, so forecasts learn across runs.
            from .standalone import standalone_state_dir
            self.state = StateStore("")
            self.state_dir = standalone_state_dir(state_dir)
        else:
            self.state = StateStore(state_dir)
            self.state_dir = state_dir
        if self.state_dir:
            filemodes.private_dir(self.state_dir)
        from .enforce.actuator import Actuator
        self.dry_run = bool(c.dry_run or os.environ.get("AGENTD_DRY_RUN") == "1")
        self.ctl = Controller(self.fs, self.root, self.caps, Planner(self.policy, self.host_memory),
                              self.state, self.events, self.procfs, sampler=rss_sampler,
                              actuator=Actuator(self.fs, self.events, dry_run=self.dry_run, procfs=self.procfs,
                                                tell=self.outbox.tell))
        # One list of stages (agentd/stages.py) serves both the controller's pipeline and
        # events (place, on_tool_start/end, on_agent_start/end) and the daemon's (start/stop,
        # admit, modes).
        self.ctl.hooks = self.hooks
        self.sampler = Sampler(self.ctl)
        self._move_self()
        self.ctl.setup()
        self._build_hooks()
        filemodes.shared_dir(os.path.dirname(os.path.abspath(self.socket_path)))
        self.server = Server(self, self.socket_path, group=c.api_group or d.api_group)
        if not c.standalone:
            # Every local user can connect: the API's bound on connections follows this limit
            # (api/guard.py), and a daemon started by hand often has a soft limit of 1024.
            log.info("file descriptor limit: %d", raise_fd_limit())
        for w in self.caps.warnings():
            log.warning("%s", w)

    def _size_memory(self):
        """Policy sizes, budgets and free memory count against the memory agentd really
        has: a memory.max above its root (a slice, a container) is smaller than the RAM."""
        from .monitor.hostmem import HostMemory
        from .policy.loader import load_policy
        self.memory = HostMemory(self.fs, self.root)
        self.available_memory = self.memory.available
        if self.memory.limit is not None and self.memory.total != self.host_memory:
            self.host_memory = self.memory.total
            self.policy = load_policy(self.cfg.policy, host_memory_bytes=self.host_memory, block_device=blkio.resolve)
        log.info("memory agentd manages: %s", self.memory.describe())
        from .monitor.hostmem import oom_group_above
        group = oom_group_above(self.fs, self.root)
        if group is not None:
            log.warning("%s has memory.oom.group=1 (a container runtime's or systemd's OOMPolicy=kill): an OOM "
                        "at that level kills every agent and agentd itself, not just the tool call agentd "
                        "ranks first. Turn it off there (Kubernetes: singleProcessOOMKill) for agentd's order "
                        "to apply", group)

    # Optional stages, in order: (module, what is lost when it cannot run, log level for a
    # missing feature). The order is the pipeline's: each stage's admit() and place() run
    # in it, and a later stage's limit wins (the GPU's offload cpu.weight over the class's).
    # A host without NVIDIA GPUs is normal.
    STAGES = (
        ("monitor.detect", "automatic tool-call detection disabled", logging.WARNING),
        ("enforce", "enforcement disabled", logging.WARNING),
        ("swap", "tool calls' swap left as the kernel has it", logging.INFO),
        ("reclaim", "idle agents' memory not reclaimed", logging.INFO),
        ("disk", "disk I/O weights and limits off", logging.WARNING),
        ("sched", "CPU priorities disabled", logging.WARNING),
        ("network", "egress limits off", logging.WARNING),
        ("gpu", "GPU placement off", logging.INFO),
    )

    def _build_hooks(self):
        """Build each optional stage; one clear log line for a stage that cannot run here."""
        import importlib
        from .metrics.samples import SampleLog
        self.hooks.append(SampleLog(self))       # periodic memory samples for `agentd report`
        built = {}
        for name, lost, missing_level in self.STAGES:
            try:
                build = importlib.import_module(f".{name}", __package__).build
            except ImportError as err:
                log.warning("%s: %s", lost, err)
                continue
            try:
                hook = build(self)
            except FeatureMissing as err:
                log.log(missing_level, "%s: %s", lost, err)
                continue
            except AgentdError as err:
                log.warning("%s: %s", lost, err)
                continue
            if hook is not None:
                self.hooks.append(hook)
                built[name] = hook
        if "monitor.detect" in built and "enforce" in built:
            # The kernel event monitor the detection stage runs also carries memory-watch
            # events, which the enforcer reacts to between its ticks.
            built["enforce"].subscribe(built["monitor.detect"].monitor)
        if "reclaim" in built and "enforce" in built:
            built["enforce"].count_reclaimable(built["reclaim"].reclaimable)

    # Memory the daemon keeps for itself when agents push the host into pressure: enough
    # for its Python heap, the BPF ring buffers and a burst of requests.
    SELF_MEMORY_MIN = 64 << 20

    def _move_self(self):
        """Put the daemon where agentd.placement decided and protect its memory there.

        Started by hand, the daemon moves into the leaf <root>/daemon (cgroup v2's
        no-internal-processes rule) and sets memory.min on it (and on <root>, since
        protection is only as large as the parent's), so it keeps reacting while agents
        exhaust memory. Under systemd the unit placed it already and the unit's
        MemoryMin=/OOMScoreAdjust= protect it: writing them too would fight systemd."""
        if self.cfg.standalone:
            return
        p = self.placement
        if p.move:
            self.fs.mkdir(p.self_cgroup)
            self.fs.move(p.self_cgroup, os.getpid())
            log.info("moved the daemon into %s", p.self_cgroup)
        self.self_cgroup = p.self_cgroup
        log.info("cgroup layout %s: daemon in %s, agents under %s", p.layout, p.self_cgroup, self.root)
        try:
            if self.procfs.oom_score_adj(os.getpid()) > oom.DAEMON and self.caps.sys_resource:
                # what reacts goes last
                self.ctl.actuator.set_oom(os.getpid(), oom.DAEMON, "the daemon")
        except AgentdError as err:
            log.debug("daemon oom_score_adj not set: %s", err)
        self.ctl.enable_path(self.root)     # so the agents' cgroups have memory.* files
        if not p.protect:
            return
        for cg in (self.root, p.self_cgroup):
            try:
                if self.fs.has(cg, "memory.min"):
                    cur = self.fs.read_int(cg, "memory.min") or 0
                    if cur < self.SELF_MEMORY_MIN:
                        self.ctl.actuator.set_limits(cg, cg, {"memory.min": self.SELF_MEMORY_MIN},
                                                     "the daemon's own memory")
            except AgentdError as err:
                log.warning("cannot protect the daemon's memory in %s: %s", cg, err)

    # --- lifecycle -------------------------------------------------------------
    async def serve(self):
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        readopt(self.ctl)
        await self.server.start()
        self.metrics = None
        listen = self.cfg.metrics_listen
        if listen is None:
            # Standalone runs serve metrics only when their command line asks: a laptop's
            # `agentd run` must not take the system daemon's port.
            listen = "" if self.cfg.standalone else self.policy.daemon.metrics_listen
        if listen:
            from .metrics import start_metrics
            self.metrics = start_metrics(self, listen)
        tasks = [asyncio.create_task(self._periodic(self.cfg.sweep_interval_s, self._sweep)),
                 asyncio.create_task(self._periodic(self.cfg.sample_interval_s, self._sample))]
        wd = sdnotify.watchdog_interval()
        if wd:
            tasks.append(asyncio.create_task(self._periodic(wd, lambda: sdnotify.notify("WATCHDOG=1"))))
        for h in self.hooks:
            await h.start()
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(self.ctl.agents)} agents on {self.socket_path}")
        self.events.emit("daemon_start", root=self.root, socket=self.socket_path, pid=os.getpid(),
                         standalone=self.cfg.standalone)
        log.info("agentd %s serving on %s, cgroup root %s", "standalone" if self.cfg.standalone else "daemon",
                 self.socket_path, self.root)
        self.ready.set()
        await self.stopping.wait()
        sdnotify.notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        self.ctl.pipeline.queue.release_all()     # waiting calls go on as if their wait timed out
        for h in self.hooks:
            await h.stop()
        await self.server.close()
        if self.metrics:
            self.metrics.shutdown()
        self.events.emit("daemon_stop", pid=os.getpid())
        self.events.close()

    async def _periodic(self, interval, fn):
        while True:
            await asyncio.sleep(interval)
            try:
                fn()
            except Exception:
                log.exception("periodic %s failed", getattr(fn, "__name__", fn))

    def _sweep(self):
        for h in self.hooks:
            h.before_sweep()          # e.g. drain batched exit events first
        self.ctl.sweep()
        self._follow_memory_size()
        for agent in list(self.ctl.agents.values()):
            if agent.detached and not agent.tools:
                try:
                    alive = self.fs.exists(agent.main_cgroup) and self.fs.populated(agent.main_cgroup)
                except AgentdError:
                    alive = False
                if not alive:
                    self.ctl.remove_agent(agent, reason="agent exited")

    def _follow_memory_size(self):
        """A slice or container resized under us: the policy's sizes follow, for what
        starts from now on (reload), for the agents already running (their class's
        memory limits written again), and for the hooks that keep a size of their own
        (`on_memory_size(total)`, e.g. the forecaster's largest forecast)."""
        try:
            changed = self.memory.refresh()
        except AgentdError:
            return
        if changed:
            old, self.host_memory = self.host_memory, self.memory.total
            log.info("memory agentd manages changed: %s -> %s", old, self.memory.describe())
            self.events.emit("memory_size", bytes=self.memory.total, cgroup=self.memory.cgroup)
            ok, _ = self.reload()
            if ok:
                self.ctl.resize_agents(f"memory agentd manages: {old} -> {self.host_memory} bytes")
            for h in self.hooks:
                try:
                    h.on_memory_size(self.host_memory)
                except Exception:
                    log.exception("stage %s.on_memory_size failed", type(h).__name__)

    def _sample(self):
        """One reading per tick, handed to every stage (monitor/sampler.py)."""
        snap = self.sampler.sample()
        for h in self.hooks:
            try:
                h.on_sample(snap)
            except Exception:
                log.exception("stage %s.on_sample failed", type(h).__name__)

    def stop(self):
        if self.loop and self.stopping:
            self.loop.call_soon_threadsafe(self.stopping.set)

    def reload(self):
        """Load the policy again; on any error keep the last good one and say why."""
        from .policy.loader import load_policy
        try:
            new = load_policy(self.cfg.policy, host_memory_bytes=self.host_memory, block_device=blkio.resolve)
        except (PolicyError, AgentdError) as err:
            log.error("reload failed, keeping the previous policy: %s", err)
            self.events.emit("reload", ok=False, error=str(err))
            return False, str(err)
        self.policy = new
        self.ctl.planner = Planner(new, self.host_memory)
        self._recheck_agent_policies()
        self.events.emit("reload", ok=True, policy=self.cfg.policy)
        log.info("policy %s reloaded", self.cfg.policy)
        return True, "policy reloaded"

    def _recheck_agent_policies(self):
        """After a reload the daemon's policy bounds each agent's own policy anew: one that
        no longer fits leaves its agent on the daemon's policy, and says so."""
        for agent in list(self.ctl.agents.values()):
            if agent.policy_text is None:
                continue
            try:
                self.ctl.set_view(agent, self.ctl.agent_view(agent.policy, agent.policy_text))
            except PolicyError as err:
                log.warning("agent %s: its own policy %s no longer fits under the reloaded policy; it runs under "
                            "the daemon's policy from now on:\n%s", agent.agent_id, agent.policy, err)
                self.events.emit("agent_policy", agent=agent.agent_id, ok=False, error=str(err))
                self.ctl.set_view(agent, None)


def run_daemon(cfg):
    """`agentd daemon`: serve until SIGTERM/SIGINT; SIGHUP reloads. Agents outlive us."""
    # What the daemon creates is root's alone unless it says otherwise (filemodes.py).
    # Not in standalone mode: there the process is the agent's `agentd run`, whose
    # umask the agent inherits.
    os.umask(filemodes.DAEMON_UMASK)
    app = App(cfg)
    app.build()

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, app.stop)
        loop.add_signal_handler(signal.SIGINT, app.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: (sdnotify.notify("RELOADING=1"), app.reload(),
                                                        sdnotify.notify("READY=1")))
        await app.serve()

    asyncio.run(main())
    return 0
