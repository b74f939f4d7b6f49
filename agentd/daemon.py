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

from . import sdnotify
from .adopt import readopt
from .api.server import Server
from .controller import Controller
from .errors import AgentdError, FeatureMissing, PolicyError, RequestError
from .eventlog import EventLog
from .kernel import cgroupfs, probe
from .kernel.procfs import ProcFS
from .planner import Planner
from .state import StateStore

log = logging.getLogger("agentd")

DEFAULT_SOCKET = "/run/agentd/agentd.sock"


@dataclasses.dataclass
class Config:
    policy: str = "default"
    root: str | None = None           # relative to the v2 mount; None = from policy / auto
    socket: str | None = None
    api_group: str | None = None
    metrics_listen: str | None = None  # "host:port" or "none"
    state_dir: str | None = None
    event_log: str | None = None
    standalone: bool = False
    sample_interval_s: float = 0.5
    sweep_interval_s: float = 1.0


def host_memory():
    try:
        import psutil
        return psutil.virtual_memory().total
    except Exception:
        return None


def rss_sampler(pids):
    """Sum of RSS of `pids`: the memory figure on hosts without the memory controller."""
    import psutil
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def default_root(mount, procfs):
    """The cgroup systemd delegated to us (Delegate=yes), else <mount>/agentd."""
    if os.environ.get("INVOCATION_ID"):
        own = procfs.cgroup(os.getpid()).strip("/")
        if own.endswith("/daemon"):
            own = own[: -len("/daemon")]
        if own:
            return own
    return "agentd"


class App:
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
        self.policy = load_policy(self.cfg.policy, host_memory_bytes=self.host_memory)
        d = self.policy.daemon
        c = self.cfg
        self.root = (c.root or (d.root if d.root != "auto" else None) or default_root(mount, self.procfs)).strip("/")
        self.socket_path = c.socket or os.environ.get("AGENTD_SOCKET_LISTEN") or d.socket
        self.fs = cgroupfs.CgroupFS(mount)
        self.fs.makedirs(self.root)
        self.caps = probe.probe(mount, test_cgroup=self.root)
        self.events = EventLog(c.event_log if c.event_log is not None else d.event_log)
        state_dir = c.state_dir if c.state_dir is not None else d.state_dir
        self.state = StateStore(state_dir)
        self.state_dir = state_dir
        self.ctl = Controller(self.fs, self.root, self.caps, Planner(self.policy, self.host_memory),
                              self.state, self.events, self.procfs, sampler=rss_sampler)
        # One list of hooks serves both the controller's events (on_tool_plan/start/end,
        # on_agent_start/end) and the daemon's (start/stop coroutines, admit, modes).
        self.ctl.hooks = self.hooks
        self._move_self()
        self.ctl.setup()
        self._build_hooks()
        self.server = Server(self, self.socket_path, group=c.api_group or d.api_group)
        for w in self.caps.warnings():
            log.warning("%s", w)

    # Optional stages, in order: (module, what is lost when it cannot run, log level for a
    # missing feature). GPU placement comes last: its admit() hands its decision to
    # on_tool_plan with no await in between. A host without NVIDIA GPUs is normal.
    STAGES = (
        ("detect", "automatic tool-call detection disabled", logging.WARNING),
        ("enforce", "enforcement disabled", logging.WARNING),
        ("sched", "CPU priorities disabled", logging.WARNING),
        ("gpu", "GPU placement off", logging.INFO),
    )

    def _build_hooks(self):
        """Build each optional stage; one clear log line for a stage that cannot run here."""
        import importlib
        from .metrics.samples import SampleLog
        self.hooks.append(SampleLog(self))       # periodic memory samples for `agentd report`
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

    def _move_self(self):
        """Under systemd our service cgroup *is* the root: move into a leaf so the root may
        delegate controllers to agents (cgroup v2's no-internal-processes rule)."""
        if self.cfg.standalone:
            return
        own = self.procfs.cgroup(os.getpid()).strip("/")
        if own == self.root:
            leaf = f"{self.root}/daemon"
            self.fs.mkdir(leaf)
            self.fs.move(leaf, os.getpid())
            log.info("moved the daemon into %s", leaf)

    # --- lifecycle -------------------------------------------------------------
    async def serve(self):
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        readopt(self.ctl)
        await self.server.start()
        self.metrics = None
        listen = self.cfg.metrics_listen or self.policy.daemon.metrics_listen
        if listen and listen != "none" and not self.cfg.standalone:
            from .metrics import start_metrics
            self.metrics = start_metrics(self, listen)
        tasks = [asyncio.create_task(self._periodic(self.cfg.sweep_interval_s, self._sweep)),
                 asyncio.create_task(self._periodic(self.cfg.sample_interval_s, self._sample))]
        wd = sdnotify.watchdog_interval()
        if wd:
            tasks.append(asyncio.create_task(self._periodic(wd, lambda: sdnotify.notify("WATCHDOG=1"))))
        for h in self.hooks:
            start = getattr(h, "start", None)
            if start:
                await start()
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
        for h in self.hooks:
            stop = getattr(h, "stop", None)
            if stop:
                await stop()
        await self.server.close()
        if self.metrics:
            self.metrics.shutdown()
        self.events.emit("daemon_stop", pid=os.getpid())

    async def _periodic(self, interval, fn):
        while True:
            await asyncio.sleep(interval)
            try:
                fn()
            except Exception:
                log.exception("periodic %s failed", getattr(fn, "__name__", fn))

    def _sweep(self):
        for h in self.hooks:
            fn = getattr(h, "before_sweep", None)   # e.g. drain batched exit events first
            if fn:
                fn()
        self.ctl.sweep()
        for agent in list(self.ctl.agents.values()):
            if getattr(agent, "detached", False) and not agent.tools:
                try:
                    alive = self.fs.exists(agent.main_cgroup) and self.fs.populated(agent.main_cgroup)
                except AgentdError:
                    alive = False
                if not alive:
                    self.ctl.remove_agent(agent, reason="agent exited")

    def _sample(self):
        for agent in self.ctl.agents.values():
            for tool in list(agent.tools.values()):
                if not tool.done:
                    self.ctl.sample_tool(tool)

    def stop(self):
        if self.loop and self.stopping:
            self.loop.call_soon_threadsafe(self.stopping.set)

    def reload(self):
        """Load the policy again; on any error keep the last good one and say why."""
        from .policy.loader import load_policy
        try:
            new = load_policy(self.cfg.policy, host_memory_bytes=self.host_memory)
        except (PolicyError, AgentdError) as err:
            log.error("reload failed, keeping the previous policy: %s", err)
            self.events.emit("reload", ok=False, error=str(err))
            return False, str(err)
        self.policy = new
        self.ctl.planner = Planner(new, self.host_memory)
        self.events.emit("reload", ok=True, policy=self.cfg.policy)
        log.info("policy %s reloaded", self.cfg.policy)
        return True, "policy reloaded"

    # --- API ops (called by api.server) ------------------------------------------
    def _caller_agent(self, conn):
        try:
            cg = self.procfs.cgroup(conn.pid)
        except AgentdError:
            raise RequestError("gone", f"caller pid {conn.pid} vanished") from None
        agent, tool = self.ctl.agent_of_cgroup(cg)
        return agent, tool, cg

    def _check_child(self, conn, pid, peer_cg):
        """The process to place must be the caller's own child, still in the caller's cgroup."""
        try:
            ppid = self.procfs.ppid(pid)
            child_cg = self.procfs.cgroup(pid)
        except AgentdError:
            raise RequestError("gone", f"process {pid} is gone") from None
        if ppid != conn.pid:
            raise RequestError("not_child", f"process {pid} is not a child of the caller (pid {conn.pid})")
        if child_cg != peer_cg:
            raise RequestError("not_child", f"process {pid} is not in the caller's cgroup")

    async def op_hello(self, conn, req):
        from . import __version__, API_VERSION
        return {"version": __version__, "api": API_VERSION, "standalone": self.cfg.standalone}

    async def op_run_start(self, conn, req):
        if not self.server.is_admin(conn):
            raise RequestError("forbidden", f"uid {conn.uid} may not create agents: only root or members of "
                                            f"group {self.server.group!r} may")
        _, _, peer_cg = self._caller_agent(conn)
        self._check_child(conn, req["pid"], peer_cg)
        agent = self.ctl.create_agent(req.get("name"), req.get("class"), uid=conn.uid, policy=req.get("policy"),
                                      standalone=self.cfg.standalone)
        try:
            self.ctl.place_main(agent, req["pid"])
        except AgentdError:
            self.ctl.remove_agent(agent, reason="placement failed")
            raise
        agent.argv = req.get("argv") or []
        conn.agent = agent.agent_id
        return {"agent": agent.agent_id, "cgroup": agent.cgroup, "agent_class": agent.agent_class,
                "env": {"AGENTD_AGENT": agent.agent_id, "AGENTD_SOCKET": self.socket_path}}

    async def op_run_done(self, conn, req):
        agent = self.ctl.agents.get(req["agent"])
        if agent is None:
            raise RequestError("no_agent", f"no agent {req['agent']!r}")
        if conn.agent != agent.agent_id and not self.server.is_admin(conn):
            raise RequestError("forbidden", "only the connection that started an agent may end it")
        await self._settle_agent(agent)
        self.ctl.remove_agent(agent, kill=True, reason="agent exited")
        conn.agent = None
        return {}

    async def _settle_agent(self, agent, timeout=1.0):
        """Give tool calls that are just finishing a moment to report before teardown."""
        deadline = time.monotonic() + timeout
        while any(not t.done for t in agent.tools.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def op_tool_start(self, conn, req):
        agent, _, peer_cg = self._caller_agent(conn)
        if agent is None:
            raise RequestError("not_in_agent", f"`agentd tool` must run inside an agent started with `agentd run` "
                                               f"(pid {conn.pid} is in cgroup {peer_cg})")
        if "pid" in req:
            self._check_child(conn, req["pid"], peer_cg)
        elif any((a == agent.agent_id) for a, _ in conn.tools):
            raise RequestError("busy", "this connection already has a tool call starting")
        for h in self.hooks:
            admit = getattr(h, "admit", None)
            if admit:
                await admit(conn, agent, req)
        tool = self.ctl.start_tool(agent, req.get("pid"), req["argv"], req.get("class"), req.get("mem"),
                                   req.get("intent"))
        tool.conn = conn
        conn.tools.add((agent.agent_id, tool.tool_id))
        env = {"AGENTD_TOOL": tool.key}
        env.update(getattr(tool, "env", {}) or {})
        return {"agent": agent.agent_id, "tool": tool.tool_id, "cgroup": tool.cgroup,
                "path": self.fs.path(tool.cgroup), "env": env,
                "messages": list(getattr(tool, "start_messages", []))}

    async def op_tool_attach(self, conn, req):
        agent, _, peer_cg = self._caller_agent(conn)
        if agent is None or agent.agent_id != req["agent"] or (req["agent"], req["tool"]) not in conn.tools:
            raise RequestError("forbidden", "only the connection that started a tool call may attach to it")
        tool = agent.tools.get(req["tool"])
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        self._check_child(conn, req["pid"], peer_cg)
        self.ctl.attach(tool, req["pid"])
        return {}

    async def op_tool_done(self, conn, req):
        agent, _, _ = self._caller_agent(conn)
        if agent is None or agent.agent_id != req["agent"]:
            raise RequestError("forbidden", "a tool call can only be reported from inside its own agent")
        tool = agent.tools.get(req["tool"])
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        rusage = {k: req[k] for k in ("wall_s", "utime_s", "stime_s", "maxrss_kb") if k in req}
        if tool.plan.stragglers == "kill" and tool.plan.straggler_grace_s > 0:
            await self._await_empty(tool.cgroup, tool.plan.straggler_grace_s)
        result = self.ctl.finish_tool(tool, status=req.get("status"), rusage=rusage)
        conn.tools.discard((agent.agent_id, tool.tool_id))
        from .feedback import messages_for
        return {"messages": messages_for(result), "result": result}

    async def _await_empty(self, cg, timeout):
        deadline = time.monotonic() + timeout
        delay = 0.002
        while time.monotonic() < deadline:
            try:
                if not self.fs.populated(cg):
                    return True
            except AgentdError:
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return False

    async def op_status(self, conn, req):
        from .status import snapshot
        admin = self.server.is_admin(conn)
        only = None
        if not admin:
            agent, _, _ = self._caller_agent(conn)
            if agent is None:
                raise RequestError("forbidden", "status is for root, the agentd group, or processes inside an agent")
            only = agent.agent_id
        if req.get("agent"):
            if only and req["agent"] != only:
                raise RequestError("forbidden", "an agent may only inspect itself")
            only = req["agent"]
        return snapshot(self, only)

    async def op_reload(self, conn, req):
        if not self.server.is_admin(conn):
            raise RequestError("forbidden", "only root or the agentd group may reload the policy")
        ok, msg = self.reload()
        if not ok:
            raise RequestError("reload_failed", f"kept the previous policy: {msg}")
        return {"message": msg}

    def _target_tool(self, conn, req):
        agent = self.ctl.agents.get(req["agent"])
        caller, _, _ = self._caller_agent(conn)
        if not self.server.is_admin(conn) and (caller is None or agent is None or caller.agent_id != agent.agent_id):
            raise RequestError("forbidden", "a process may only act on tool calls of its own agent")
        tool = agent.tools.get(req["tool"]) if agent else None
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        return tool

    async def op_freeze(self, conn, req):
        tool = self._target_tool(conn, req)
        self.fs.freeze(tool.cgroup, True)
        tool.frozen = True
        self.events.emit("action", agent=tool.agent_id, tool=tool.tool_id, action="freeze", reason="api")
        return {}

    async def op_thaw(self, conn, req):
        tool = self._target_tool(conn, req)
        self.fs.freeze(tool.cgroup, False)
        tool.frozen = False
        self.events.emit("action", agent=tool.agent_id, tool=tool.tool_id, action="thaw", reason="api")
        return {}

    async def op_kill(self, conn, req):
        tool = self._target_tool(conn, req)
        tool.actions.append({"action": "kill", "reason": "api", "ts": time.time()})
        self.fs.kill(tool.cgroup)
        self.events.emit("action", agent=tool.agent_id, tool=tool.tool_id, action="kill", reason="api")
        return {}

    def connection_lost(self, conn):
        for agent_id, tool_id in conn.tools:
            agent = self.ctl.agents.get(agent_id)
            tool = agent.tools.get(tool_id) if agent else None
            if tool and not tool.done:
                tool.orphaned = True      # its launcher may reconnect; else the sweep finishes it
        if conn.agent:
            agent = self.ctl.agents.get(conn.agent)
            if agent:
                agent.detached = True


def run_daemon(cfg):
    """`agentd daemon`: serve until SIGTERM/SIGINT; SIGHUP reloads. Agents outlive us."""
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


class Standalone:
    """An App in a background thread of `agentd run`, for one agent tree, when no daemon runs."""

    def __init__(self, cfg):
        self.app = App(cfg)
        self.thread = None
        self.error = None

    def start(self):
        self.app.build()

        def target():
            try:
                asyncio.run(self.app.serve())
            except BaseException as err:     # surfaced to the caller, who reports it
                self.error = err
                self.app.ready.set()

        self.thread = threading.Thread(target=target, name="agentd-standalone", daemon=True)
        self.thread.start()
        self.app.ready.wait(30)
        if self.error:
            raise self.error
        return self.app.socket_path

    def stop(self):
        self.app.stop()
        if self.thread:
            self.thread.join(10)
        try:
            self.app.fs.remove_tree(self.app.root)
            # The shared parent of all standalone roots goes too once the last one ends.
            parent = self.app.root.rpartition("/")[0]
            if parent and not self.app.fs.children(parent):
                self.app.fs.rmdir(parent)
        except AgentdError:
            pass
