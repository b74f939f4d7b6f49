"""The enforcer: the daemon hook that runs monitor -> forecast -> policy -> enforce.

- at a tool call's start: forecast its peak from history, set memory.high from it
  (on_tool_plan, before the controller applies the limits);
- while it runs (a cheap tick, every TICK_S): sample, re-forecast, move memory.high with
  the re-forecast and free host memory, and run the pressure ladder;
- on pressure (PSI trigger or poll): the ladder acts at once on the lowest-priority calls;
- on the memory watch (BPF, between ticks): a call that crossed its forecast is
  re-forecast at once; growth that would use up the shared memory left within the
  policy's horizon is urgent pressure (the ladder steps every watch interval);
- before a call starts (admit): admission control, with a notice while it waits;
- at its end: record it in the history, and let waiting calls in.
"""

import asyncio
import logging
import time

from ..errors import AgentdError
from ..forecast import Forecast
from ..hostmem import room_below
from ..kernel import cgroupfs as cgf
from ..units import format_size
from . import admission, growth, limits
from .actuator import Actuator
from .admitter import Admitter
from .forecasting import Forecasting
from .limits import as_bytes as _bytes
from .ladder import FREEZE, KILL, RESUME, THROTTLE, Candidate, Ladder
from .pressure import ROOT, PressureWatch
from .held import HeldCalls
from ..pipeline import Share
from ..stages import Stage

log = logging.getLogger("agentd.enforce")

TICK_S = 0.5
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
        self.live = None          # latest LiveForecast
        self.evidence = False     # forecast backed by history or a declared --mem
        self.watch_prev = None    # (ts_ns, rss_bytes) of the latest memory-watch event
        self.ceiling = None       # the policy's own memory.high for the call: never raised past
        self.released = float("-inf")   # when the ladder last gave its memory.high back
        self.relieved = float("-inf")   # when the ladder last undid a step on it
        self.reached = ()         # the steps in effect just before that
        self.bounded_told = False # the log said once that a limit bounds its growth

    def undo(self, step):
        """The ladder gave `step` back: remember what was in effect (a relapse resumes there)."""
        self.reached = tuple(sorted(set(self.reached) | set(self.applied)))
        self.applied = [s for s in self.applied if s != step]
        self.relieved = time.monotonic()


class Enforcer(Stage):
    name = "enforce"

    def __init__(self, app, dry_run=False, fake_pressure_file=None, available_fn=None):
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
        # Nothing agentd froze may stay frozen once agentd is gone.
        for agent in self.ctl.agents.values():
            for tool in agent.tools.values():
                if tool.frozen and not tool.done:
                    self.actuator.act(tool, "thaw", "agentd is stopping")
        self.admitter.release_all()
        self.fc.close()

    def modes(self):
        # Mode words only: they are metric labels (the history file's path is in mode_details).
        return {"enforce": "dry-run" if self.actuator.dry_run else "on",
                "pressure": self.watch.mode, "history": "off" if self.fc.store is None else "sqlite"}

    def mode_details(self):
        return {"history": {"mode": self.modes()["history"], "path": self.fc.mode}}

    def metrics(self):
        out = dict(self.counters, **self.admitter.counters)
        out["actions_total"] = dict(self.actuator.counts)
        out["admission_waiting"] = len(self.admitter.waiters)
        return out

    def metric_stats(self):
        """What the metrics collector reads at scrape time (see agentd/metrics/collector.py)."""
        return {"admission_waiting": len(self.admitter.waiters),
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
        """Forecast the call's memory and hold it back while it does not fit (admitter.py)."""
        return await self.admitter.admit(call, tell)

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
        log.info("tool %s: forecast %s (%s, confidence %.2f) -> memory.high %s", call.key,
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

    def _on_mem(self, ev):
        """A watched tool call crossed its forecast or grew faster than the alert rate."""
        ids = self.by_cgid.get(ev.cgroup_id)
        agent = self.ctl.agents.get(ids[0]) if ids else None
        tool = agent.tools.get(ids[1]) if agent else None
        st = self.tools.get(tool.key) if tool else None
        if tool is None or st is None or tool.done:
            return
        now = time.monotonic()
        self.counters["memwatch_events_total"] = self.counters.get("memwatch_events_total", 0) + 1
        st.current = max(st.current or 0, ev.rss_bytes)
        self.fc.sample(tool.key, now, st.current)
        available = self.available_fn()
        self._adapt(tool, st, available)
        p = self.policy.pressure
        if not p.memory_watch:
            return                # switched off by a reload: observe only
        # Growth that would use up the memory left before the horizon ends is pressure
        # now: PSI reports a stall only once reclaim has begun, and at 140 MiB/s
        # the kernel's OOM killer may come within a PSI window of that.
        rate = self._growth_rate(st, ev)
        # Only shared memory is watched: what the host (or agentd's own limit) has left.
        # Under the agent's own memory.max the growth can only harm that agent, and the
        # kernel already answers it there: at memory.max its OOM order (agentd/oom.py)
        # kills the call, never the agent, and only if the call really does not fit; at
        # memory.high the agent stalls, and its own PSI trigger brings the ladder. So the
        # projection stops at the tightest memory.max above the call (growth.py).
        room = available
        peak = getattr(tool.forecast, "peak_bytes", 0) or 0
        # The start forecast, from history: the live re-forecast extrapolates the same burst.
        left = peak - st.current if st.evidence and st.current < peak else None
        horizon = p.memory_watch_horizon_s
        proj = growth.project(rate, horizon, room, forecast_left=left)
        if not proj.urgent:
            return
        # Only growth that would use up the shared memory is worth reading the limits for.
        proj = growth.project(rate, horizon, room, forecast_left=left, limit_rooms=self._limit_rooms(agent, tool))
        if not proj.urgent:
            if not st.bounded_told:
                st.bounded_told = True
                log.info("tool %s: grows %s/s, but %s leaves it %s of the %s shared memory left: "
                         "left to the kernel (memory watch)", tool.key, format_size(int(rate)), proj.bound,
                         format_size(proj.grow), format_size(max(room, 0)))
            return
        # The kernel stamped the event (CLOCK_MONOTONIC, as time.monotonic()): reactions
        # are timed from it.
        seen = ev.ts_ns / 1e9 if 0 < ev.ts_ns / 1e9 <= now else now
        # Shared memory (the host's, agentd's budget) is everyone's: the lowest-priority
        # calls of all agents yield first, not necessarily the growing agent's own.
        self._pressure(ROOT, seen,
                       f"memory is running out in the agentd tree: {agent.agent_id}/{tool.tool_id} grows "
                       f"{format_size(int(rate))}/s with {format_size(max(room, 0))} left (memory watch)",
                       hold_s=2 * self.ladder.urgent_interval_s, urgent=True)

    def _growth_rate(self, st, ev):
        """Bytes/s the call grows at, over at least one watch window.

        A rate event is sent as soon as the window's growth passes the alert budget, maybe
        a few ms into the window, so growth / elapsed can be a burst's instantaneous speed.
        Between two events of the same call (at least one window apart) the rate is
        measured; a first event is only credited with its growth over a whole window."""
        window_ns = max(int(self.ladder.urgent_interval_s * 1e9), 1)
        prev, st.watch_prev = st.watch_prev, (ev.ts_ns, ev.rss_bytes)
        if prev is not None and window_ns <= ev.ts_ns - prev[0] <= 4 * window_ns:
            return max(ev.rss_bytes - prev[1], 0) / ((ev.ts_ns - prev[0]) / 1e9)
        return max(ev.growth_bytes, 0) / (max(ev.window_ns, window_ns) / 1e9)

    def _limit_rooms(self, agent, tool):
        """(name, room) under each memory.max from the call's cgroup up to agentd's root,
        page cache counted as room: the call cannot grow past the tightest of them. A
        limit that cannot be read bounds nothing (the projection stays at its pace)."""
        names = {tool.cgroup: "its own memory.max", agent.cgroup: "its agent's memory.max",
                 self.app.root: "agentd's memory.max"}
        out, cg = [], tool.cgroup.strip("/")
        while cg:
            try:
                if self.fs.has(cg, cgf.MEMORY_MAX):
                    limit = self.actuator.read_int(cg, cgf.MEMORY_MAX)
                    if limit is not None:
                        out.append((names.get(cg, f"memory.max of {cg}"), room_below(self.fs, cg, limit)))
            except (AgentdError, OSError, TypeError, ValueError):
                pass
            if cg == self.app.root.strip("/"):
                break             # above the root: the shared room itself (hostmem) says it
            cg = cg.rpartition("/")[0]
        return out

    OWN_LIMIT_NEAR = 0.9          # usage at this share of its own memory.high/max: that limit binds

    def _own_limit_binds(self, agent_id):
        """Is the agent's stall its own doing: its memory.high or memory.max nearly reached?"""
        agent = self.ctl.agents.get(agent_id)
        if agent is None:
            return True               # unknown: keep the trigger's own scope
        try:
            caps = [self.actuator.read_int(agent.cgroup, f) for f in (cgf.MEMORY_HIGH, cgf.MEMORY_MAX)
                    if self.fs.has(agent.cgroup, f)]
            caps = [c for c in caps if c is not None]
            if not caps:
                return False
            return self.fs.read_int(agent.cgroup, cgf.MEMORY_CURRENT) >= self.OWN_LIMIT_NEAR * min(caps)
        except (AgentdError, OSError, TypeError, ValueError):
            return True

    def _room(self, agent, available):
        """(room, own): memory the agent's tool calls may still take before the kernel
        holds them back or OOM-kills — what the host (or agentd's own limit) has available,
        or less where the agent has a memory.high or memory.max (reclaimable page cache
        counted as room) — and whether the agent's own limit is what binds. Room is None
        when neither is known."""
        room, own = available, False
        try:
            # memory.high too: past it the kernel holds the agent back as surely as at max.
            caps = [self.actuator.read_int(agent.cgroup, f) for f in (cgf.MEMORY_HIGH, cgf.MEMORY_MAX)
                    if self.fs.has(agent.cgroup, f)]
            caps = [c for c in caps if c is not None]
            cap = min(caps) if caps else None
            if cap is not None:
                left = room_below(self.fs, agent.cgroup, cap)     # its page cache is room
                if room is None or left < room:
                    room, own = left, True
        except (AgentdError, OSError, TypeError, ValueError):
            pass
        return room, own

    def on_tool_end(self, agent, tool, result):
        self.tools.pop(tool.key, None)
        if self.by_cgid.pop(tool.cgroup_id, None) is not None and self.memwatch is not None:
            try:
                self.memwatch.clear(tool.cgroup_id)
            except (AgentdError, OSError):
                pass
        self.fc.record(tool, agent, result)
        self.admitter.admit_waiters()

    # --- pressure ----------------------------------------------------------------
    def _on_pressure(self, key, now, how):
        """A PSI trigger fired (or the poller saw the same stall) at `now` (monotonic)."""
        own = self.held.own_doing(key, now)
        if own:
            self.counters["pressure_own_stall_total"] = self.counters.get("pressure_own_stall_total", 0) + 1
            log.debug("pressure on %s ignored: %s of its %s µs stall are calls held at their memory.high (%s)",
                      key or "the agentd tree", own[1], own[0], how)
            self.app.events.emit("pressure_ignored", scope=key or "root", stall_us=own[0], held_us=own[1],
                                 held=own[2], reason="the calls agentd holds at their memory.high stall")
            return
        if key != ROOT and not self._own_limit_binds(key):
            # The agent stalls on memory everyone shares (no limit of its own is near):
            # everyone's lowest-priority calls yield, not necessarily this agent's.
            how = f"{how}, felt by agent {key}"
            key = ROOT
        where = "the agentd tree" if key == ROOT else f"agent {key}"
        p = self.policy.pressure
        self._pressure(key, now, f"memory is short in {where}: tasks stalled over "
                                 f"{p.psi_some_threshold_us / 1000:g} ms in {p.psi_window_us / 1e6:g} s ({how})")

    def _pressure(self, key, seen, reason, hold_s=None, urgent=False):
        """Pressure on `key` (an agent, or ROOT for the whole tree) noticed at `seen`."""
        self.counters["pressure_events_total"] += 1
        if urgent:
            self.counters["memwatch_pressure_total"] = self.counters.get("memwatch_pressure_total", 0) + 1
        hold = self.ladder.window_s * 1.5 if hold_s is None else hold_s
        self.pressure_until[key] = max(self.pressure_until.get(key, float("-inf")), seen + hold)
        # Wall time of the kernel's notification, so reactions are timed from it (the
        # trigger thread's or the BPF program's stamp); a time from elsewhere (tests) as is.
        lag = time.monotonic() - seen
        self.trigger_ts = time.time() - (lag if 0 <= lag < 5.0 else 0.0)
        self.ladder.pressure(seen, reason, hold_s=hold, urgent=urgent)
        self._ladder_step(seen)   # react now, not at the next tick

    def _scope(self, now):
        """Agents whose tool calls the ladder may act on: all under root pressure, else
        those whose own memory.pressure fired."""
        if now <= self.pressure_until.get(ROOT, float("-inf")):
            return None
        return {k for k, until in self.pressure_until.items() if k != ROOT and now <= until}

    def _candidates(self, scope, relief=False):
        out = []
        # The fit test reads free memory and every call's reservation: only for relief,
        # and only once a call has a step to undo (most ticks have none).
        needs_fit = relief and any(st.applied for st in self.tools.values())
        fit = self._fit_check() if needs_fit else None
        for agent in self.ctl.agents.values():
            if scope is not None and agent.agent_id not in scope:
                continue          # escalation stays inside the agents under pressure
            for tool in agent.tools.values():
                st = self.tools.get(tool.key)
                if tool.done or st is None:
                    continue
                if st.can is None:
                    st.can = self._probe(tool)
                relapse = st.reached if time.monotonic() - st.relieved <= self._relapse_s() else ()
                out.append(Candidate(tool.key, tool.plan.priority, agent.priority, st.current, tuple(st.applied),
                                     st.can, started=tool.started,
                                     fits=bool(fit and st.applied and KILL not in st.applied and fit(tool.key)),
                                     relapse=relapse))
            if self._kill_main_allowed(agent):
                out.append(Candidate(f"{agent.agent_id}/main", agent.priority, agent.priority, main=True,
                                     can=frozenset({KILL}), started=agent.created,
                                     applied=(KILL,) if agent.agent_id in self.mains_killed else ()))
        return out

    def _relapse_s(self):
        """Pressure back this soon after a call's steps were undone: it relapsed."""
        return max(self.ladder.relief_interval_s, 2 * self.ladder.window_s)

    def _fit_check(self):
        """A function: would the paused call `key` fit if it went on growing now? The
        admission test, with what the call already holds counted as taken: its forecast
        growth must fit next to the running calls' (those of lower-priority agents yield)."""
        running = {r.key: r for r in self.admitter.running()}
        budget, available = self.policy.pressure.budget, self.available_fn()

        def fit(key):
            me = running.get(key)
            if me is None:
                return False
            others = [r for k, r in running.items() if k != key]
            return admission.fits_resumed(me, others, budget, available)
        return fit

    def _probe(self, tool):
        can = {KILL}
        if self.fs.has(tool.cgroup, cgf.MEMORY_HIGH):
            can.add(THROTTLE)
        if self.fs.has(tool.cgroup, cgf.FREEZE):
            can.add(FREEZE)
        return frozenset(can)

    def _kill_main_allowed(self, agent):
        try:
            return self.policy.agent_class(agent.agent_class).kill_main_allowed
        except AgentdError:
            return False

    def _ladder_step(self, now):
        # Relief (no pressure) looks at every call; escalation only inside its scope.
        pressed = self.ladder.under_pressure(now)
        scope = self._scope(now) if pressed else None
        d = self.ladder.decide(now, self._candidates(scope, relief=not pressed))
        if d is None:
            return None
        agent_id, _, tool_id = d.key.partition("/")
        agent = self.ctl.agents.get(agent_id)
        if agent is None:
            return None
        if tool_id == "main":
            self.mains_killed.add(agent.agent_id)
            return self.actuator.kill_main(agent, d.reason)
        tool = agent.tools.get(tool_id)
        st = self.tools.get(d.key)
        if tool is None or st is None or tool.done:
            return None
        p = self.policy
        trig = self.trigger_ts if d.action in (THROTTLE, FREEZE, KILL) else None
        try:
            if d.action == THROTTLE:
                cur_high = self.actuator.read_high(tool.cgroup)
                st.saved_high = self.actuator.read(tool.cgroup, cgf.MEMORY_HIGH)
                room, _ = self._room(agent, self.available_fn())
                new = limits.throttle_high(st.current, p.pressure.throttle_factor, p.forecast.min_high, cur_high,
                                           room=room)
                rec = self.actuator.act(tool, THROTTLE, d.reason, new_high=new, trigger_ts=trig)
                st.applied.append(THROTTLE)     # even when the limit was already that low
                self.held.read(time.monotonic())      # the base its own stall is set against
            elif d.action in ("restore", RESUME):
                saved = st.saved_high
                rec = self.actuator.act(tool, "restore", d.reason,
                                        new_high=None if saved in (None, "max") else int(saved))
                st.undo(THROTTLE)
                st.released = st.relieved
                if d.action == RESUME:
                    if rec:
                        tool.limits_applied[cgf.MEMORY_HIGH] = rec["new"]
                    rec = self.actuator.act(tool, "thaw", d.reason)
                    st.undo(FREEZE)
            elif d.action == FREEZE:
                rec = self.actuator.act(tool, FREEZE, d.reason, trigger_ts=trig)
                st.applied.append(FREEZE)
            elif d.action == "thaw":
                rec = self.actuator.act(tool, "thaw", d.reason)
                st.undo(FREEZE)
            else:
                rec = self.actuator.act(tool, KILL, d.reason, trigger_ts=trig)
                st.applied.append(KILL)
        except AgentdError as err:
            log.warning("tool %s: %s failed: %s", d.key, d.action, err)
            return None
        if rec and d.action in (THROTTLE, "restore"):
            tool.limits_applied[cgf.MEMORY_HIGH] = rec["new"]     # what status shows
        if d.action in ("thaw", "restore", RESUME, KILL):
            self.admitter.admit_waiters()
        return rec

    # --- the tick ----------------------------------------------------------------
    def on_sample(self, snapshot):
        """The daemon's tick (every TICK_S): its one reading of the calls' memory."""
        try:
            self.tick(snapshot.mono, snapshot.memory)
        except Exception:
            log.exception("enforcer tick failed")

    def tick(self, now, memory=None):
        """`memory`: tool key -> bytes read this tick (a Snapshot's); None reads each call."""
        self._follow_reload()
        available = self.available_fn()
        for agent in list(self.ctl.agents.values()):
            for tool in list(agent.tools.values()):
                st = self.tools.get(tool.key)
                if tool.done or st is None:
                    continue
                cur = self.ctl.sample_tool(tool) if memory is None else memory.get(tool.key)
                if cur is None:
                    continue
                st.current = cur
                self.fc.sample(tool.key, now, cur)
                self._adapt(tool, st, available)
        self.held.read(now)
        self.watch.poll(now)
        self._ladder_step(now)
        self.admitter.admit_waiters()

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
        high = self.actuator.read_high(tool.cgroup)
        st.live = self.fc.reforecast(tool, high)
        if st.live is None or not self.fs.has(tool.cgroup, cgf.MEMORY_HIGH):
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
                                         tool=tool.tool_id)
        except AgentdError as err:
            log.debug("tool %s: cannot move memory.high: %s", tool.key, err)
            return
        if res:
            tool.limits_applied[cgf.MEMORY_HIGH] = res[1]


def _available():
    """Memory the host can still give (MemAvailable), or None when unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:
        return None
