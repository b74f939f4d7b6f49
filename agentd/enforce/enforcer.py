"""The enforcer: the memory stage (agentd/stages.py) that runs monitor -> forecast ->
policy -> enforce.

- at a tool call's start: forecast its peak from history (admit, or place on the
  automatic path), and give the call's Placement memory.high from it (place);
- while it runs (the daemon's tick, every TICK_S, with the sampler's one reading):
  re-forecast, move memory.high with the re-forecast and free host memory, and run the
  pressure ladder;
- on pressure (PSI trigger or poll) and on the memory watch (BPF, between ticks): see
  reaction.py;
- before a call starts (admit): admission control, with a notice while it waits;
- at its end: record it in the history, and let waiting calls in.
"""

import asyncio
import logging
import time

from ..errors import AgentdError
from ..forecast import Forecast
from ..kernel import cgroupfs as cgf
from ..kernel import swap as ksw
from ..kernel.procfs import host_meminfo
from ..monitor.hostmem import room_below
from ..units import format_size
from . import limits
from .actuator import Actuator
from .admitter import Admitter
from .forecasting import Forecasting
from .limits import as_bytes as _bytes
from .ladder import Ladder
from .pressure import ROOT, PressureWatch
from .held import HeldCalls
from .ioreaction import IoReaction
from .reaction import Reaction
from ..pipeline import Share
from ..stages import Stage

log = logging.getLogger("agentd.enforce")

TICK_S = 0.5
_UNREAD = object()
# A tool call growing faster than this (over the memory watch's window, 0.25 s) is
# reported at once, and then once per window while it keeps that pace: a pytest can add
# gigabytes in two seconds, a tick apart is too late. Whether the growth is dangerous is
# decided here against the memory left (pressure.memory_watch_horizon_s); the BPF side
# only bounds the event rate (at most one rate event per window per call).
GROWTH_ALERT_BYTES_PER_S = 32 << 20



class ToolState:
    """What the enforcer remembers about one running tool call."""

    def __init__(self):
        self.applied = []         # ladder steps in effect, in order
        self.saved_high = None    # memory.high before the throttle step ("max" or bytes str)
        self.can = None           # frozenset of steps this cgroup offers (probed once)
        self.current = 0
        self.seen = 0             # the most it has held so far (admission: what is still to come)
        self.live = None          # latest LiveForecast
        self.evidence = False     # forecast backed by history or a declared --mem
        self.watch_prev = None    # (ts_ns, rss_bytes) of the latest memory-watch event
        self.ceiling = None       # the policy's own memory.high for the call: never raised past
        self.released = float("-inf")   # when the ladder last gave its memory.high back
        self.relieved = float("-inf")   # when the ladder last undid a step on it
        self.reached = ()         # the steps in effect just before that
        self.bounded_told = False # the log said once that a limit bounds its growth
        self.swap_saved = None    # paused with its memory sent to swap: the swap limits to put back
        self.offloaded = False    # ... and that freed at least half of what it held
        self.swap_held = 0        # memory.current when its memory began to go
        self.swap_moving = False  # more is still to go, a step per tick

    def undo(self, step):
        """The ladder gave `step` back: remember what was in effect (a relapse resumes there)."""
        self.reached = tuple(sorted(set(self.reached) | set(self.applied)))
        self.applied = [s for s in self.applied if s != step]
        self.relieved = time.monotonic()


class Enforcer(Reaction, IoReaction, Stage):
    name = "enforce"

    def __init__(self, app, dry_run=False, fake_pressure_file=None, available_fn=None, swap_free_fn=None):
        self.app = app
        self.fs = app.fs
        self.ctl = app.ctl
        # The controller's actuator, where there is one: class limits and the ladder's
        # writes then share one dry-run switch and one record of would-be values.
        shared = getattr(app.ctl, "actuator", None)
        self.actuator = shared if isinstance(shared, Actuator) else Actuator(app.fs, app.events)
        self.actuator.dry_run = self.actuator.dry_run or dry_run
        self.fc = Forecasting(app.policy, app.state_dir, app.host_memory)
        p = app.policy.pressure
        self.ladder = Ladder(tuple(p.steps), p.step_interval_s, p.relief_interval_s, p.psi_window_us / 1e6)
        self._follow_reload()
        self.watch = PressureWatch(p.psi_some_threshold_us, p.psi_window_us, self._on_pressure,
                                   fake_file=fake_pressure_file)
        self.available_fn = available_fn or _available
        self.swap_free_fn = swap_free_fn or ksw.swap_free     # where a paused call's memory may go
        self.tools = {}           # tool key -> ToolState
        self.mains_killed = set() # agents whose main cgroup the ladder killed
        self.admitter = Admitter(self)
        self.pressure_until = {}  # watch key -> monotonic time its latest pressure lasts to
        self.trigger_ts = None    # wall time of the latest event (reaction figures)
        self.task = None
        self.counters = {"pressure_events_total": 0}
        self.by_cgid = {}         # cgroup id of a watched tool call -> (agent, tool)
        self.memwatch = None
        self.monitor = None       # the kernel event monitor, handed over by the daemon (subscribe)
        self.held = HeldCalls(self)

    @property
    def policy(self):
        return self.app.policy    # re-read: a reload swaps it

    # --- daemon hooks ----------------------------------------------------------
    def subscribe(self, monitor):
        """Memory-watch events come from the detection stage's monitor (daemon.py wires it)."""
        self.monitor = monitor

    async def start(self):
        loop = asyncio.get_running_loop()
        # Limits on an agent need the memory controller in <root>/agents' subtree_control;
        # the controller enables it on the ancestors of <root>/agents but not on that
        # cgroup itself, so agent cgroups would get no memory.* files at all.
        try:
            self.fs.enable_controllers(self.ctl.agents_cgroup)
        except AgentdError as err:
            log.debug("cannot enable controllers on %s: %s", self.ctl.agents_cgroup, err)
        self.watch.watch(ROOT, self.fs.path(self.app.root, cgf.MEMORY_PRESSURE))
        for agent in self.ctl.agents.values():
            self._watch_agent(agent)
        self.watch.start(loop)
        # The BPF memory watch (or its polling stand-in) reports a tool call that outgrows
        # its forecast or grows fast, between ticks: react then, not at the next sample.
        # Calls are tracked while pressure.memory_watch is on (checked at each call's start).
        mon = self.monitor
        self.memwatch = mon.memwatch if mon is not None else None
        if self.memwatch is not None:
            mon.mem_listeners.append(self._on_mem)
            window = getattr(self.memwatch, "window_s", None) or getattr(self.memwatch, "window_ns", 0) / 1e9
            if window:
                self.ladder.urgent_interval_s = window
        # Ticks come from the daemon's sampler (on_sample), one reading for every stage.

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.watch.stop()
        # Nothing agentd froze may stay frozen once agentd is gone, nor keep the swap a
        # pause opened for it (the actuator's thaw puts that back): the call runs on
        # without agentd, under its class's limits.
        for agent in self.ctl.agents.values():
            for tool in agent.tools.values():
                if tool.frozen and not tool.done:
                    self.actuator.act(tool, "thaw", "agentd is stopping")
        self.fc.close()

    def count_reclaimable(self, reclaimable_fn):
        """Memory idle agents hold that can go to swap counts as available (the reclaim
        stage's figure, daemon.py wires it): admission and the ladder's projections see
        the room the kernel would make before any OOM, not only what is free now."""
        base = self.available_fn

        def available():
            free = base()
            return None if free is None else free + reclaimable_fn()
        self.available_fn = available

    def modes(self):
        # Mode words only: they are metric labels (the history file's path is in mode_details).
        return {"enforce": "dry-run" if self.actuator.dry_run else "on",
                "pressure": self.watch.mode, "history": "off" if self.fc.store is None else "sqlite"}

    def mode_details(self):
        return {"history": {"mode": self.modes()["history"], "path": self.fc.mode}}

    def metrics(self):
        out = dict(self.counters, **self.admitter.counters)
        out["actions_total"] = dict(self.actuator.counts)
        out["admission_waiting"] = self.ctl.pipeline.queue.waiting(self)
        return out

    def metric_stats(self):
        """What the metrics collector reads at scrape time (see agentd/metrics/collector.py)."""
        return {"admission_waiting": self.ctl.pipeline.queue.waiting(self),
                "pressure_events": self.counters["pressure_events_total"],
                "pressure_own_stall": self.counters.get("pressure_own_stall_total", 0)}

    def on_memory_size(self, total):
        """The memory agentd manages was resized (daemon._follow_memory_size): forecasts
        are bounded by the new size from now on."""
        self.fc.resize(total)

    def on_agent_start(self, agent):
        self._watch_agent(agent)

    def on_agent_end(self, agent):
        self.watch.unwatch(agent.agent_id)
        self.pressure_until.pop(agent.agent_id, None)
        self.mains_killed.discard(agent.agent_id)

    def _watch_agent(self, agent):
        self.watch.watch(agent.agent_id, self.fs.path(agent.cgroup, cgf.MEMORY_PRESSURE))

    async def admit(self, call, tell):
        """Forecast the call's memory; a Wait for the admission queue where it does not
        fit (admitter.py)."""
        return self.admitter.admit(call)

    def pick(self, requests):
        return self.admitter.pick(requests)

    def grant(self, call, request, info, waited):
        return self.admitter.grant(call, request, waited)

    def expire(self, call, request, waited):
        return self.admitter.expire(call, request, waited)

    def place(self, call, decided):
        """memory.high from the call's forecast (made at admit, else now), before the
        controller writes its limits; the call's admission wait, if it had one."""
        if decided is not None:
            self.admitter.claim(decided)
            fc = decided["forecast"]
            evidence = decided["evidence"]
        else:
            fc = self.fc.forecast(list(call.argv), call.plan.tool_class, call.agent.agent_id,
                                  call.agent.agent_class)
            evidence = fc.confidence > 0
        fc, high, ceiling = self._plan_high(call, fc)
        st = self.tools[call.key] = ToolState()
        st.evidence = evidence
        st.ceiling = ceiling
        queued = decided.get("queue") if decided is not None else None
        return Share(limits={} if high is None else {cgf.MEMORY_HIGH: high}, forecast=fc,
                     actions=(queued,) if queued else ())

    def observe(self, call):
        """A dry run's automatically detected call, which is not placed: the forecast and
        memory.high it would have got; nothing follows it afterwards."""
        fc, high, _ = self._plan_high(call, self.fc.forecast(list(call.argv), call.plan.tool_class,
                                                             call.agent.agent_id, call.agent.agent_class))
        return Share(limits={} if high is None else {cgf.MEMORY_HIGH: high}, forecast=fc)

    def _plan_high(self, call, fc):
        """(forecast, memory.high, ceiling) for `call` from forecast `fc`: the forecast
        capped at memory.max, the memory.high to start with (None: the class turns
        forecasts off) and the policy's own memory.high for the call (a ceiling never
        raised past), or None."""
        cap = _bytes(call.plan.limits.get(cgf.MEMORY_MAX))
        if cap is not None and fc.peak_bytes > cap:
            # The call cannot use more than its memory.max: that is the forecast to tell.
            fc = Forecast(cap, fc.confidence, fc.source + ":capped")
        decision = call.plan.decision
        if decision is not None and not decision.forecast:
            return fc, None, None
        lim = call.plan.limits
        high = limits.start_high(fc.peak_bytes, self.policy.forecast.headroom, self.policy.forecast.min_high,
                                 cap=_bytes(lim.get(cgf.MEMORY_MAX)))
        declared = _bytes(lim.get(cgf.MEMORY_HIGH))
        if declared is not None:
            high = min(high, declared)     # a policy's own memory.high is a ceiling
        host = self.app.host_memory
        value = "max" if host and high >= host else str(high)   # past the host's memory: no limit
        # DEBUG: the call's one INFO line is its limits' (toolcalls.start_tool), which
        # says the forecast too; a log line costs about a millisecond in an emulated guest.
        log.debug("tool %s: forecast %s (%s, confidence %.2f) -> memory.high %s", call.key,
                 format_size(fc.peak_bytes), fc.source, fc.confidence,
                 value if value == "max" else format_size(high))
        return fc, value, declared

    def on_tool_start(self, agent, tool):
        mw = self.memwatch
        if mw is None or tool.cgroup_id is None or tool.forecast is None or not self.policy.pressure.memory_watch:
            return
        try:
            mw.set_limit(tool.cgroup_id, threshold_bytes=int(tool.forecast.peak_bytes),
                         rate_bytes_per_s=GROWTH_ALERT_BYTES_PER_S, path=tool.cgroup)
            self.by_cgid[tool.cgroup_id] = (agent.agent_id, tool.tool_id)
        except (AgentdError, OSError, ValueError) as err:
            log.debug("tool %s: no memory watch: %s", tool.key, err)

    def on_tool_end(self, agent, tool, result):
        self.tools.pop(tool.key, None)
        if self.by_cgid.pop(tool.cgroup_id, None) is not None and self.memwatch is not None:
            try:
                self.memwatch.clear(tool.cgroup_id)
            except (AgentdError, OSError):
                pass
        self.fc.record(tool, agent, result)
        self.ctl.pipeline.wake()

    # --- the tick ----------------------------------------------------------------
    def on_sample(self, snapshot):
        """The daemon's tick (every TICK_S): its one reading of the calls' memory."""
        try:
            self._io_tick(snapshot)
        except Exception:
            log.exception("enforcer I/O pressure reading failed")
        try:
            self.tick(snapshot.mono, snapshot.memory)
        except Exception:
            log.exception("enforcer tick failed")
        self.fc.flush()           # the calls that ended since the last tick, one transaction

    def tick(self, now, memory=None):
        """`memory`: tool key -> bytes read this tick (a Snapshot's); None reads each call."""
        self._follow_reload()
        available = _UNREAD           # read once, at the first running call: a tick with none needs no figure
        for agent in list(self.ctl.agents.values()):
            for tool in list(agent.tools.values()):
                st = self.tools.get(tool.key)
                if tool.done or st is None:
                    continue
                cur = self.ctl.sample_tool(tool) if memory is None else memory.get(tool.key)
                if cur is None:
                    continue
                st.current = cur
                st.seen = max(st.seen, cur)
                self.fc.sample(tool.key, now, cur)
                if available is _UNREAD:
                    available = self.available_fn()
                self._adapt(tool, st, available)
        self._swap_out_steps()
        self.held.read(now)
        self.watch.poll(now)
        self._ladder_step(now)
        self.ctl.pipeline.wake()

    def _follow_reload(self):
        """A reloaded policy's ladder timings and steps apply from the next tick; the
        ladder's state (last pressure, last step) carries over. Trigger thresholds stay
        until restart: re-registering every trigger mid-incident would drop events."""
        p = self.policy.pressure
        self.ladder.steps = tuple(p.steps)
        self.ladder.step_interval_s = p.step_interval_s
        self.ladder.relief_interval_s = p.relief_interval_s
        # A paused call that fits again resumes after one PSI window of calm: the window
        # in which a renewed stall would show.
        self.ladder.quick_relief_s = min(p.relief_interval_s, p.psi_window_us / 1e6)

    def _adapt(self, tool, st, available):
        """Move memory.high with the re-forecast, unless the ladder holds this call."""
        decision = tool.plan.decision
        if st.applied or tool.frozen or (decision is not None and not decision.forecast):
            return
        offered, high = self.actuator.high_of(tool.cgroup)     # one read per call per tick
        st.live = self.fc.reforecast(tool, high)
        if st.live is None or not offered:
            return
        f = self.policy.forecast
        caps = [c for c in (_bytes(tool.limits_applied.get(cgf.MEMORY_MAX)), st.ceiling) if c is not None]
        new = limits.adapt_high(high, st.live.peak_bytes, f.headroom, f.min_high,
                                cap=min(caps) if caps else None, usage=st.current, available=available)
        if new is None or new == high:
            return
        reason = (f"re-forecast {format_size(st.live.peak_bytes)} at {format_size(int(st.live.growth_bytes_per_s))}/s"
                  + (f", {format_size(available)} free on the host" if available is not None else ""))
        try:
            res = self.actuator.set_high(f"tool {tool.key}", tool.cgroup, new, reason, agent=tool.agent_id,
                                         tool=tool.tool_id, current=high)
        except AgentdError as err:
            log.debug("tool %s: cannot move memory.high: %s", tool.key, err)
            return
        if res:
            tool.run.limits_applied[cgf.MEMORY_HIGH] = res[1]


def _available():
    """Memory the host can still give (MemAvailable), or None when unknown."""
    return host_meminfo()[1]
