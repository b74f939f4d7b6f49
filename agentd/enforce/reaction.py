"""How the enforcer reacts between and at its ticks: the memory watch (a call that
outgrew its forecast, or grows fast enough to use up the memory left) and the pressure
ladder (PSI triggers and polls -> the lowest-priority calls are throttled, frozen,
killed, and given back in reverse once the pressure is gone).

A mixin of the Enforcer (enforcer.py): it reads the enforcer's per-call state (`tools`),
its ladder, admitter and forecasts, and acts only through its actuator.
"""

import logging
import time

from ..errors import AgentdError
from ..kernel import cgroupfs as cgf
from ..monitor.hostmem import room_below
from ..units import format_size
from . import admission, growth, limits
from .ladder import FREEZE, KILL, RESUME, THROTTLE, Candidate, offload_bytes, pause_freed
from .pressure import ROOT

log = logging.getLogger("agentd.enforce")


class Reaction:
    # --- the memory watch --------------------------------------------------------
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
        st.seen = max(st.seen, st.current)
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

    def _pressure(self, key, seen, reason, hold_s=None, urgent=False, io=False):
        """Pressure on `key` (an agent, or ROOT for the whole tree) noticed at `seen`;
        `io`: a call's disk traffic (ioreaction.py), not memory."""
        self.counters["pressure_events_total"] += 1
        if urgent:
            self.counters["memwatch_pressure_total"] = self.counters.get("memwatch_pressure_total", 0) + 1
        hold = self.ladder.window_s * 1.5 if hold_s is None else hold_s
        self.pressure_until[key] = max(self.pressure_until.get(key, float("-inf")), seen + hold)
        # Wall time of the kernel's notification, so reactions are timed from it (the
        # trigger thread's or the BPF program's stamp); a time from elsewhere (tests) as is.
        lag = time.monotonic() - seen
        self.trigger_ts = time.time() - (lag if 0 <= lag < 5.0 else 0.0)
        self.ladder.pressure(seen, reason, hold_s=hold, urgent=urgent, io=io)
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
                                     relapse=relapse, io_rate=self.io_rates.get(tool.key, 0.0),
                                     offloaded=st.offloaded))
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
            return admission.fits_resumed(me, others, budget, available, floor=self.admitter.floor)
        return fit

    # --- a paused call's memory ------------------------------------------------------
    # One memory.reclaim write per tick: the write is synchronous, and a paused test suite's
    # few hundred MiB compressed into zram at once would hold the daemon's loop (every
    # other call's start and end) for a second or more under emulation.
    SWAP_OUT_STEP = 64 << 20

    def _swap_out(self, tool, st, reason):
        """The call is frozen: where the host has free swap, its memory goes there
        (memory.swap.max raised, then memory.reclaim a step per tick), so the call that goes
        on gets the room. Tool calls run with memory.swap.max 0 (the swap stage), so
        without this a frozen call keeps every page. Without swap nothing changes, and the
        ladder knows the pause freed nothing (ladder.holds_paused_memory)."""
        try:
            free = self.swap_free_fn()
        except AgentdError:
            free = 0
        held = self._read_current(tool) or st.current     # fresh: it may have grown since the tick
        want = offload_bytes(held, free, self.SWAP_OUT_STEP)
        if not want:
            st.swap_moving = False
            return
        who, why = f"tool {tool.key}", f"paused: {reason}"
        try:
            if st.swap_saved is None:
                res = self.actuator.swap_out(who, tool.cgroup, want, why, agent=tool.agent_id, tool=tool.tool_id)
                if res is None:
                    return
                st.swap_saved, before, after, _ = res
                st.swap_held = before
            else:
                before, after, _ = self.actuator.reclaim(who, tool.cgroup, want, why)
        except AgentdError as err:
            log.warning("tool %s: its memory cannot go to swap: %s", tool.key, err)
            st.swap_moving = False
            return
        # Another step while the kernel took what it was asked and more is left.
        st.swap_moving = want == self.SWAP_OUT_STEP and after < before and not self.actuator.dry_run
        st.offloaded = pause_freed(st.swap_held, after)
        if not self.actuator.dry_run:
            st.current = after

    def _swap_out_steps(self):
        """Each tick: the next step of every paused call whose memory is still going out."""
        for agent in list(self.ctl.agents.values()):
            for tool in list(agent.tools.values()):
                st = self.tools.get(tool.key)
                if st is not None and st.swap_moving and FREEZE in st.applied and not tool.done:
                    self._swap_out(tool, st, "its memory goes on to swap")

    def _swap_back(self, tool, st, reason):
        """Before a thaw: the class's swap limits back (pages in swap fault back in on use)."""
        saved, st.swap_saved, st.offloaded, st.swap_moving = st.swap_saved, None, False, False
        if not saved:
            return
        try:
            self.actuator.swap_back(f"tool {tool.key}", tool.cgroup, saved, f"resumed: {reason}",
                                    agent=tool.agent_id, tool=tool.tool_id)
        except AgentdError as err:
            log.warning("tool %s: its swap limits cannot be put back: %s", tool.key, err)

    def _read_current(self, tool):
        try:
            return self.fs.read_int(tool.cgroup, cgf.MEMORY_CURRENT) or 0
        except (AgentdError, OSError, ValueError):
            return 0

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
                        tool.run.limits_applied[cgf.MEMORY_HIGH] = rec["new"]
                    self._swap_back(tool, st, d.reason)
                    rec = self.actuator.act(tool, "thaw", d.reason)
                    st.undo(FREEZE)
            elif d.action == FREEZE:
                rec = self.actuator.act(tool, FREEZE, d.reason, trigger_ts=trig)
                st.applied.append(FREEZE)
                if rec:
                    self._swap_out(tool, st, d.reason)
            elif d.action == "thaw":
                self._swap_back(tool, st, d.reason)
                rec = self.actuator.act(tool, "thaw", d.reason)
                st.undo(FREEZE)
            else:
                rec = self.actuator.act(tool, KILL, d.reason, trigger_ts=trig)
                st.applied.append(KILL)
                st.swap_saved, st.offloaded, st.swap_moving = None, False, False   # its cgroup goes
        except AgentdError as err:
            log.warning("tool %s: %s failed: %s", d.key, d.action, err)
            return None
        if rec and d.action in (THROTTLE, "restore"):
            tool.run.limits_applied[cgf.MEMORY_HIGH] = rec["new"]     # what status shows
        if d.action in ("thaw", "restore", RESUME, KILL):
            self.ctl.pipeline.wake()
        return rec
