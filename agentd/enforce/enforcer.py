"""The enforcer: the daemon hook that runs monitor -> forecast -> policy -> enforce.

- at a tool call's start: forecast its peak from history, set memory.high from it
  (on_tool_plan, before the controller applies the limits);
- while it runs (a cheap tick, every TICK_S): sample, re-forecast, move memory.high with
  the re-forecast and free host memory, and run the pressure ladder;
- on pressure (PSI trigger or poll): the ladder acts at once on the lowest-priority calls;
- before a call starts (admit): admission control, with a notice while it waits;
- at its end: record it in the history, and let waiting calls in.
"""

import asyncio
import logging
import time

from ..api import protocol
from ..errors import AgentdError, RequestError
from ..feedback import _program
from ..forecast import Forecast
from ..kernel import cgroupfs as cgf
from ..units import format_size
from . import admission, limits
from .actuator import Actuator
from .forecasting import Forecasting
from .ladder import FREEZE, KILL, THROTTLE, Candidate, Ladder
from .pressure import ROOT, PressureWatch

log = logging.getLogger("agentd.enforce")

TICK_S = 0.5
RESERVATION_TTL_S = 10.0          # an admitted call that never started stops counting


def _bytes(v):
    if v is None or v == "max":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class ToolState:
    """What the enforcer remembers about one running tool call."""

    def __init__(self):
        self.applied = []         # ladder steps in effect, in order
        self.saved_high = None    # memory.high before the throttle step ("max" or bytes str)
        self.can = None           # frozenset of steps this cgroup offers (probed once)
        self.current = 0
        self.live = None          # latest LiveForecast
        self.evidence = False     # forecast backed by history or a declared --mem


class Enforcer:
    def __init__(self, app, dry_run=False, fake_pressure_file=None, available_fn=None):
        self.app = app
        self.fs = app.fs
        self.ctl = app.ctl
        self.actuator = Actuator(app.fs, app.events, dry_run=dry_run)
        self.fc = Forecasting(app.policy, app.state_dir, app.host_memory)
        p = app.policy.pressure
        self.ladder = Ladder(tuple(p.steps), p.step_interval_s, p.relief_interval_s, p.psi_window_us / 1e6)
        self.watch = PressureWatch(p.psi_some_threshold_us, p.psi_window_us, self._on_pressure,
                                   fake_file=fake_pressure_file)
        self.available_fn = available_fn or _available
        self.tools = {}           # tool key -> ToolState
        self.pending = {}         # (agent, pid) -> {"forecast", "peak", "queue", "ts"}
        self.waiters = {}         # Waiter.seq -> (Waiter, asyncio.Future)
        self.pressure_at = {}     # watch key -> monotonic time of its last event
        self.trigger_ts = None    # wall time of the latest event (reaction figures)
        self.task = None
        self.counters = {"admission_queued_total": 0, "admission_wait_seconds_total": 0.0,
                         "admission_timeouts_total": 0, "pressure_events_total": 0}

    @property
    def policy(self):
        return self.app.policy    # re-read: a reload swaps it

    # --- daemon hooks ----------------------------------------------------------
    async def start(self):
        loop = asyncio.get_running_loop()
        self.watch.watch(ROOT, self.fs.path(self.app.root, cgf.MEMORY_PRESSURE))
        for agent in self.ctl.agents.values():
            self._watch_agent(agent)
        self.watch.start(loop)
        self.task = asyncio.create_task(self._run())

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.watch.stop()
        # Nothing agentd froze may stay frozen once agentd is gone.
        for agent in self.ctl.agents.values():
            for tool in agent.tools.values():
                if tool.frozen and not tool.done:
                    self.actuator.act(tool, "thaw", "agentd is stopping")
        for _, fut in self.waiters.values():
            if not fut.done():
                fut.set_result(False)
        self.fc.close()

    def modes(self):
        return {"enforce": "dry-run" if self.actuator.dry_run else "on",
                "pressure": self.watch.mode, "history": self.fc.mode}

    def metrics(self):
        out = dict(self.counters)
        out["actions_total"] = dict(self.actuator.counts)
        out["admission_waiting"] = len(self.waiters)
        return out

    def on_agent_start(self, agent):
        self._watch_agent(agent)

    def on_agent_end(self, agent):
        self.watch.unwatch(agent.agent_id)
        self.pressure_at.pop(agent.agent_id, None)

    def _watch_agent(self, agent):
        self.watch.watch(agent.agent_id, self.fs.path(agent.cgroup, cgf.MEMORY_PRESSURE))

    def on_tool_plan(self, agent, tool):
        """Forecast the call and set memory.high from it before the limits are written."""
        pend = self.pending.pop((agent.agent_id, tool.pid), None)
        if pend and pend.get("queue"):
            tool.actions.append(pend["queue"])
        fc = pend["forecast"] if pend else self.fc.forecast(tool.argv, tool.plan.tool_class, agent.agent_id,
                                                             agent.agent_class)
        cap = _bytes(tool.plan.limits.get(cgf.MEMORY_MAX))
        if cap is not None and fc.peak_bytes > cap:
            # The call cannot use more than its memory.max: that is the forecast to tell.
            fc = Forecast(cap, fc.confidence, fc.source + ":capped")
        tool.forecast = fc
        st = self.tools[tool.key] = ToolState()
        st.evidence = pend["evidence"] if pend else fc.confidence > 0
        decision = getattr(tool.plan, "decision", None)
        if decision is not None and not decision.forecast:
            return
        lim = tool.plan.limits
        high = limits.start_high(fc.peak_bytes, self.policy.forecast.headroom, self.policy.forecast.min_high,
                                 cap=_bytes(lim.get(cgf.MEMORY_MAX)))
        declared = _bytes(lim.get(cgf.MEMORY_HIGH))
        if declared is not None:
            high = min(high, declared)     # a policy's own memory.high is a ceiling
        host = self.app.host_memory
        value = "max" if host and high >= host else str(high)   # past the host's memory: no limit
        lim[cgf.MEMORY_HIGH] = value
        log.info("tool %s: forecast %s (%s, confidence %.2f) -> memory.high %s", tool.key,
                 format_size(fc.peak_bytes), fc.source, fc.confidence,
                 value if value == "max" else format_size(high))

    def on_tool_start(self, agent, tool):
        pass

    def on_tool_end(self, agent, tool, result):
        self.tools.pop(tool.key, None)
        self.fc.record(tool, agent, result)
        self._admit_waiters()

    # --- admission -------------------------------------------------------------
    async def admit(self, conn, agent, req):
        plan = self.ctl.planner.plan_tool(agent, req["argv"], req.get("class"), req.get("mem"))
        fc = self.fc.forecast(req["argv"], plan.tool_class, agent.agent_id, agent.agent_class)
        cap = _bytes(plan.limits.get(cgf.MEMORY_MAX))
        peak = fc.peak_bytes if cap is None else min(fc.peak_bytes, cap)
        key = (agent.agent_id, req["pid"])
        self._expire_pending()
        # Admission acts on evidence: history behind the forecast, or memory the caller
        # declared (--mem). A cold-start prior only says "unknown"; making such a call wait
        # would serialise every new command while the ladder already guards the host.
        evidence = fc.confidence > 0 or req.get("mem") is not None
        pend = {"forecast": fc, "peak": peak, "ts": time.monotonic(), "evidence": evidence}
        a = self.policy.admission
        budget = self.policy.pressure.budget
        running = self._running()
        if not a.enabled or not evidence or admission.fits(peak, running, budget, self.available_fn()):
            self.pending[key] = pend
            return
        prog = _program(req["argv"])
        w = admission.Waiter(priority=plan.priority, peak=peak, key=f"{agent.agent_id}/pid{req['pid']}")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[w.seq] = (w, fut)
        self.counters["admission_queued_total"] += 1
        t0 = time.monotonic()
        conn.send(protocol.notice("queued", (
            f"[agentd] {prog} is waiting for memory: it is forecast to need {format_size(peak)} and the "
            f"running tool calls are forecast to use {format_size(admission.demand(running))} of the "
            f"{format_size(budget) if budget else 'unlimited'} budget; it starts when room appears "
            f"(at most {a.max_wait_s:g} s)")))
        self.app.events.emit("action", agent=agent.agent_id, tool=None, action="queue", argv=req["argv"][:8],
                             reason="memory budget", forecast_bytes=peak)
        log.info("agent %s: %s queued for memory (forecast %s, demand %s, budget %s)", agent.agent_id, prog,
                 format_size(peak), format_size(admission.demand(running)), format_size(budget) if budget else "-")
        try:
            admitted = await asyncio.wait_for(asyncio.shield(fut), a.max_wait_s)
        except asyncio.TimeoutError:
            admitted = False
        finally:
            self.waiters.pop(w.seq, None)
            self.pending.pop(("admitted", w.seq), None)
        waited = time.monotonic() - t0
        self.counters["admission_wait_seconds_total"] += waited
        rec = {"action": "queue", "reason": "memory budget", "ts": round(time.time() - waited, 3),
               "seconds": round(waited, 3), "forecast_bytes": peak}
        if not admitted:
            self.counters["admission_timeouts_total"] += 1
            rec["timed_out"] = True
            if a.on_timeout == "fail":
                raise RequestError("no_memory", f"{prog} waited {waited:.0f} s for memory and none came free "
                                                f"(forecast {format_size(peak)}); try again later or use less memory")
        pend["queue"] = rec
        pend["ts"] = time.monotonic()
        self.pending[key] = pend
        log.info("agent %s: %s admitted after %.2f s%s", agent.agent_id, prog, waited,
                 " (wait timed out)" if not admitted else "")

    def _running(self):
        out = []
        for agent in self.ctl.agents.values():
            for tool in agent.tools.values():
                if tool.done:
                    continue
                st = self.tools.get(tool.key)
                if st is None:
                    continue
                # Without evidence a call reserves what it holds (its past), not a guess
                # at its future.
                fc = getattr(tool.forecast, "peak_bytes", 0) or 0
                if st.evidence:
                    cap = _bytes(tool.limits_applied.get(cgf.MEMORY_MAX)) or _bytes(tool.plan.limits.get(cgf.MEMORY_MAX))
                    fc = st.live.peak_bytes if st.live else fc
                    fc = min(fc, cap) if cap else fc
                else:
                    fc = 0
                out.append(admission.Running(tool.key, fc, st.current))
        # Admitted but not yet started: reserve their forecast.
        out += [admission.Running(f"{k[0]}/pid{k[1]}", p["peak"] if p["evidence"] else 0, 0)
                for k, p in self.pending.items()]
        return out

    def _expire_pending(self):
        now = time.monotonic()
        for k in [k for k, p in self.pending.items() if now - p["ts"] > RESERVATION_TTL_S]:
            del self.pending[k]

    def _admit_waiters(self):
        if not self.waiters:
            return
        self._expire_pending()
        picked = admission.pick([w for w, _ in self.waiters.values()], self._running(),
                                self.policy.pressure.budget, self.available_fn())
        for w in picked:
            _, fut = self.waiters.pop(w.seq)
            if not fut.done():
                fut.set_result(True)
                # Reserved until its coroutine resumes and stores its own reservation, so
                # the next pick cannot hand the same room out twice.
                self.pending[("admitted", w.seq)] = {"peak": w.peak, "evidence": True, "ts": time.monotonic()}

    # --- pressure ----------------------------------------------------------------
    def _on_pressure(self, key, now, how):
        self.counters["pressure_events_total"] += 1
        self.pressure_at[key] = now
        self.trigger_ts = time.time()
        where = "the agentd tree" if key == ROOT else f"agent {key}"
        p = self.policy.pressure
        self.ladder.pressure(now, f"memory is short in {where}: tasks stalled over "
                                  f"{p.psi_some_threshold_us / 1000:g} ms in {p.psi_window_us / 1e6:g} s ({how})")
        self._ladder_step(now)    # react now, not at the next tick

    def _scope(self, now):
        """Agents whose tool calls the ladder may act on: all under root pressure, else
        those whose own memory.pressure fired."""
        horizon = self.ladder.window_s * 1.5
        if now - self.pressure_at.get(ROOT, float("-inf")) <= horizon:
            return None
        return {k for k, t in self.pressure_at.items() if k != ROOT and now - t <= horizon}

    def _candidates(self, scope):
        out = []
        for agent in self.ctl.agents.values():
            if scope is not None and agent.agent_id not in scope and not self._has_applied(agent):
                continue
            for tool in agent.tools.values():
                st = self.tools.get(tool.key)
                if tool.done or st is None:
                    continue
                if st.can is None:
                    st.can = self._probe(tool)
                out.append(Candidate(tool.key, tool.plan.priority, agent.priority, st.current, tuple(st.applied),
                                     st.can, started=tool.started))
            if self._kill_main_allowed(agent):
                out.append(Candidate(f"{agent.agent_id}/main", agent.priority, agent.priority, main=True,
                                     can=frozenset({KILL}), started=agent.created))
        return out

    def _has_applied(self, agent):
        # Calls already acted on stay candidates so relief can reach them.
        return any(self.tools.get(t.key) and self.tools[t.key].applied for t in agent.tools.values())

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
        scope = self._scope(now) if self.ladder.under_pressure(now) else None
        cands = self._candidates(scope)
        if scope is not None:
            # Escalation stays inside the agents under pressure.
            cands = [c for c in cands if c.key.split("/", 1)[0] in scope]
        d = self.ladder.decide(now, cands)
        if d is None:
            return None
        agent_id, _, tool_id = d.key.partition("/")
        agent = self.ctl.agents.get(agent_id)
        if agent is None:
            return None
        if tool_id == "main":
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
                st.saved_high = self.fs.read(tool.cgroup, cgf.MEMORY_HIGH).strip()
                new = limits.throttle_high(st.current, p.pressure.throttle_factor, p.forecast.min_high, cur_high)
                rec = self.actuator.act(tool, THROTTLE, d.reason, new_high=new, trigger_ts=trig)
                st.applied.append(THROTTLE)     # even when the limit was already that low
            elif d.action == "restore":
                saved = st.saved_high
                rec = self.actuator.act(tool, "restore", d.reason,
                                        new_high=None if saved in (None, "max") else int(saved))
                st.applied = [s for s in st.applied if s != THROTTLE]
            elif d.action == FREEZE:
                rec = self.actuator.act(tool, FREEZE, d.reason, trigger_ts=trig)
                st.applied.append(FREEZE)
            elif d.action == "thaw":
                rec = self.actuator.act(tool, "thaw", d.reason)
                st.applied = [s for s in st.applied if s != FREEZE]
            else:
                rec = self.actuator.act(tool, KILL, d.reason, trigger_ts=trig)
                st.applied.append(KILL)
        except AgentdError as err:
            log.warning("tool %s: %s failed: %s", d.key, d.action, err)
            return None
        if d.action in ("thaw", "restore", KILL):
            self._admit_waiters()
        return rec

    # --- the tick ----------------------------------------------------------------
    async def _run(self):
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("enforcer tick failed")

    def tick(self, now):
        available = self.available_fn()
        for agent in list(self.ctl.agents.values()):
            for tool in list(agent.tools.values()):
                st = self.tools.get(tool.key)
                if tool.done or st is None:
                    continue
                cur = self.ctl.sample_tool(tool)
                if cur is None:
                    continue
                st.current = cur
                self.fc.sample(tool.key, now, cur)
                self._adapt(tool, st, available)
        self.watch.poll(now)
        self._ladder_step(now)
        self._admit_waiters()

    def _adapt(self, tool, st, available):
        """Move memory.high with the re-forecast, unless the ladder holds this call."""
        decision = getattr(tool.plan, "decision", None)
        if st.applied or tool.frozen or (decision is not None and not decision.forecast):
            return
        high = self.actuator.read_high(tool.cgroup)
        st.live = self.fc.reforecast(tool, high)
        if st.live is None or not self.fs.has(tool.cgroup, cgf.MEMORY_HIGH):
            return
        f = self.policy.forecast
        new = limits.adapt_high(high, st.live.peak_bytes, f.headroom, f.min_high,
                                cap=_bytes(tool.limits_applied.get(cgf.MEMORY_MAX)), usage=st.current,
                                available=available)
        if new is None or new == high:
            return
        reason = (f"re-forecast {format_size(st.live.peak_bytes)} at {format_size(int(st.live.growth_bytes_per_s))}/s"
                  + (f", {format_size(available)} free on the host" if available is not None else ""))
        try:
            res = self.actuator.set_high(f"tool {tool.key}", tool.cgroup, new, reason)
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
