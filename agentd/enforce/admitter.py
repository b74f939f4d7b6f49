"""Memory admission wired into the daemon: forecasts before a call starts, what a call
that must wait asks of the pipeline's admission queue (agentd/admission_queue.py) and gets
when let in, and the reservations of calls admitted but not yet placed (see admission.py
for the decisions themselves)."""

import logging
import time

import itertools

from ..admission_queue import Wait
from ..clip import clip_argv
from ..errors import AgentdError, RequestError
from ..policy.match import program_of as _program
from ..kernel import cgroupfs as cgf
from ..units import format_size
from . import admission
from .limits import as_bytes as _bytes

log = logging.getLogger("agentd.enforce")

# A reservation needs a living process. An admitted call is placed at once (the launcher
# clones into its cgroup right after the reply), so an admission that was never followed
# by a start, or a call whose cgroup holds no process this long after its start, stops
# counting: an agent cannot hold memory for nothing to make other agents' calls wait.
RESERVATION_TTL_S = 2.0
PLACE_GRACE_S = 2.0


class Admitter:
    def __init__(self, enforcer):
        self.e = enforcer
        self.pending = {}         # (agent, seq) -> {"forecast", "peak", "evidence", "queue", "ts", "key"}
        self.seq = itertools.count(1)
        self.counters = {"admission_queued_total": 0, "admission_wait_seconds_total": 0.0,
                         "admission_timeouts_total": 0}

    @property
    def floor(self):
        """The forecaster's floor: calls forecast at most this start where the memory
        really free covers them and never make others wait (admission.py)."""
        return self.e.fc.forecaster.floor

    def claim(self, pend):
        """The call admitted with `pend` is being placed: from now on it reserves as a
        running call, not as an admitted one."""
        self.pending.pop(pend["key"], None)

    def admit(self, call):
        """The memory forecast of `call`: the decision place() takes (forecast, evidence,
        a dry run's would-be wait), or a Wait for the pipeline's admission queue where it
        does not fit."""
        agent, plan, argv = call.agent, call.plan, list(call.argv)
        fc = self.e.fc.forecast(argv, plan.tool_class, agent.agent_id, agent.agent_class)
        cap = _bytes(plan.limits.get(cgf.MEMORY_MAX))
        peak = fc.peak_bytes if cap is None else min(fc.peak_bytes, cap)
        key = (agent.agent_id, next(self.seq))
        self.expire_pending()
        # Admission acts on evidence: history behind the forecast, or memory the caller
        # declared (--mem). A cold-start prior only says "unknown"; making such a call wait
        # would serialise every new command while the ladder already guards the host.
        evidence = fc.confidence > 0 or call.declared_mem
        rank = (agent.priority, plan.priority)
        pend = {"forecast": fc, "peak": peak, "ts": time.monotonic(), "evidence": evidence, "rank": rank,
                "key": key}
        a = self.e.policy.admission
        budget = self.e.policy.pressure.budget
        running = self.running()
        if not a.enabled or not evidence or admission.fits(peak, running, budget, self.e.available_fn(), rank=rank,
                                                                  floor=self.floor):
            self.pending[key] = pend
            return pend
        prog = _program(argv)
        if self.e.actuator.dry_run:
            # A dry run never holds a call back: the wait it would have had is recorded.
            rec = {"action": "queue", "reason": "memory budget", "ts": round(time.time(), 3), "seconds": 0.0,
                   "forecast_bytes": peak, "dry_run": True}
            self.e.app.events.emit("action", agent=agent.agent_id, tool=None, action="queue", argv=argv[:8],
                                   reason="memory budget", forecast_bytes=peak, dry_run=True)
            log.info("agent %s: %s would wait for memory (forecast %s, demand %s, budget %s) [dry run]",
                     agent.agent_id, prog, format_size(peak), format_size(admission.demand(running)),
                     format_size(budget) if budget else "-")
            pend["queue"] = rec
            self.pending[key] = pend
            return pend
        pend["waiter"] = admission.Waiter(priority=plan.priority, peak=peak, key=f"{agent.agent_id}/{prog}",
                                          agent_priority=agent.priority)
        self.counters["admission_queued_total"] += 1
        self.e.app.events.emit("action", agent=agent.agent_id, tool=None, action="queue", argv=clip_argv(argv)[:8],
                               reason="memory budget", forecast_bytes=peak)
        log.info("agent %s: %s queued for memory (forecast %s, demand %s, budget %s)", agent.agent_id, prog,
                 format_size(peak), format_size(admission.demand(running)), format_size(budget) if budget else "-")
        return Wait("memory", f"it is forecast to need {format_size(peak)} and the running tool calls are "
                              f"forecast to use {format_size(admission.demand(running))} of the "
                              f"{format_size(budget) if budget else 'unlimited'} budget",
                    "room appears", a.max_wait_s, pend)

    def pick(self, pends):
        """The waiting calls that fit now, strictly by priority (admission.pick)."""
        self.expire_pending()
        by_waiter = {id(p["waiter"]): p for p in pends}
        picked = admission.pick([p["waiter"] for p in pends], self.running(),
                                self.e.policy.pressure.budget, self.e.available_fn(), floor=self.floor)
        return [(by_waiter[id(w)], None) for w in picked]

    def grant(self, call, pend, waited):
        """Let a waiting call in: from now on it reserves its forecast (so that the next
        pick cannot hand the same room out twice) until it is placed."""
        return self._admitted(call, pend, waited, True)

    def expire(self, call, pend, waited):
        """Its wait timed out: it starts anyway, or is refused (admission.on_timeout)."""
        self.counters["admission_timeouts_total"] += 1
        a = self.e.policy.admission
        if a.on_timeout == "fail":
            self.counters["admission_wait_seconds_total"] += waited
            prog, peak = _program(list(call.argv)), pend["peak"]
            self.e.app.events.emit("admission", agent=call.agent.agent_id, tool_class=call.plan.tool_class,
                                   outcome="refused", wait_s=round(waited, 3), forecast_bytes=peak)
            raise RequestError("no_memory", f"{prog} waited {waited:.0f} s for memory and none came free "
                                            f"(forecast {format_size(peak)}); try again later or use less memory")
        return self._admitted(call, pend, waited, False)

    def _admitted(self, call, pend, waited, admitted):
        self.counters["admission_wait_seconds_total"] += waited
        rec = {"action": "queue", "reason": "memory budget", "ts": round(time.time() - waited, 3),
               "seconds": round(waited, 3), "forecast_bytes": pend["peak"]}
        if not admitted:
            rec["timed_out"] = True
        pend = {k: v for k, v in pend.items() if k != "waiter"}
        pend["queue"] = rec
        pend["ts"] = time.monotonic()
        self.pending[pend["key"]] = pend
        log.info("agent %s: %s admitted after %.2f s%s", call.agent.agent_id, _program(list(call.argv)), waited,
                 " (wait timed out)" if not admitted else "")
        return pend

    def running(self):
        out = []
        for agent in self.e.ctl.agents.values():
            for tool in agent.tools.values():
                if tool.done:
                    continue
                st = self.e.tools.get(tool.key)
                if st is None:
                    continue
                # Without evidence a call reserves what it holds (its past), not a guess
                # at its future.
                fc = getattr(tool.forecast, "peak_bytes", 0) or 0
                if st.evidence and not self._lives(tool):
                    fc = 0
                elif st.evidence:
                    cap = _bytes(tool.limits_applied.get(cgf.MEMORY_MAX)) or _bytes(tool.plan.limits.get(cgf.MEMORY_MAX))
                    fc = st.live.peak_bytes if st.live else fc
                    fc = min(fc, cap) if cap else fc
                else:
                    fc = 0
                out.append(admission.Running(tool.key, fc, st.current, (agent.priority, tool.plan.priority),
                                             seen=st.seen))
        # Admitted but not yet started: reserve their forecast.
        out += [admission.Running(f"{k[0]}/{k[1]}", p["peak"] if p["evidence"] else 0, 0, p.get("rank"))
                for k, p in self.pending.items()]
        return out

    def _lives(self, tool):
        """Does the call hold a process (or is it just starting)? The kernel's
        cgroup.events says, not the client."""
        if time.monotonic() - tool.started_mono < PLACE_GRACE_S:
            return True
        try:
            return self.e.ctl.fs.populated(tool.cgroup)
        except AgentdError:
            return False

    def expire_pending(self):
        now = time.monotonic()
        for k in [k for k, p in self.pending.items() if now - p["ts"] > RESERVATION_TTL_S]:
            del self.pending[k]
