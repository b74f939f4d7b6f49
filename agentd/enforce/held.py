"""The calls agentd holds at their memory.high, and whether a stall is theirs.

Wiring for agentd/enforce/stall.py (whose decisions are pure): every tick it reads the
stall counters (`memory.pressure` total=) of the agentd tree, of each agent with running
calls and of those calls; at a pressure event it sets the stall of the file that fired
against the stall of the calls held at their memory.high over the same interval.
"""

import time

from ..errors import AgentdError
from ..kernel import cgroupfs as cgf
from ..kernel import psi
from .ladder import THROTTLE
from .limits import as_bytes
from .pressure import ROOT
from .stall import StallLedger, held_delta, own_doing

HELD_NEAR = 0.9               # usage at this share of its memory.high: the limit holds it
SHORT_SHARE = 0.05            # less than this share of agentd's memory left: a real shortage


class HeldCalls:
    def __init__(self, enforcer):
        self.e = enforcer
        self.ledger = StallLedger(enforcer.policy.pressure.psi_window_us / 1e6)

    def calls(self, key, fresh=False):
        """Running, unfrozen calls in scope `key` (ROOT: all) that a memory.high agentd set
        for them holds back: throttled (or given their limit back less than a window ago:
        a trigger reports the stall of the window before it), or at their forecast's
        limit. Not where the agent's own memory.high/max binds (its class's limit, not
        agentd's, makes that stall), and none while the shared memory is nearly gone (then
        every stall is a shortage). `fresh`: read what each call holds now (a trigger can
        fire between two ticks' samples, as a call grows into its limit)."""
        e = self.e
        available, total = e.available_fn(), e.app.host_memory
        if available is not None and total and available < SHORT_SHARE * total:
            return []
        now = time.monotonic()
        out = []
        for agent in e.ctl.agents.values():
            if key != ROOT and agent.agent_id != key:
                continue
            mine = []
            for tool in agent.tools.values():
                st = e.tools.get(tool.key)
                if tool.done or st is None or tool.frozen:
                    continue
                high = as_bytes(tool.limits_applied.get(cgf.MEMORY_HIGH))
                if THROTTLE in st.applied or now - st.released <= e.ladder.window_s:
                    mine.append(tool)
                elif high is not None:
                    if fresh:
                        try:
                            st.current = max(st.current, e.fs.read_int(tool.cgroup, cgf.MEMORY_CURRENT) or 0)
                        except (AgentdError, OSError, ValueError):
                            pass
                    if st.current >= HELD_NEAR * high:
                        mine.append(tool)
            if mine and not e._own_limit_binds(agent.agent_id):
                out += mine
        return out

    def own_doing(self, key, now):
        """Is the stall that fired `key`'s trigger the held calls'? Returns (scope stall µs,
        held calls' stall µs, their keys) when it is, else None."""
        path = self.e.watch.paths.get(key)
        held = self.calls(key, fresh=True) if path is not None else []
        if not held:
            return None
        total = _reading(path)
        tpaths = [(tool, self.e.fs.path(tool.cgroup, cgf.MEMORY_PRESSURE)) for tool in held]

        def known(t):             # every held call's stall is known from time t on
            return all(self.ledger.at(tp, t) is not None or tool.started_mono >= t for tool, tp in tpaths)
        base = self.ledger.base(path, now, known)
        if total is None or base is None:
            return None
        held_us = []
        for tool, tpath in tpaths:
            t_total = _reading(tpath)
            held_us.append(None if t_total is None else
                           held_delta(t_total, base[0], self.ledger.at(tpath, base[0]), tool.started_mono))
        p = self.e.policy.pressure
        scope = (now - base[0], max(total - base[1], 0))
        if not own_doing(scope, held_us, p.psi_some_threshold_us, p.psi_window_us / 1e6):
            return None
        return scope[1], sum(held_us), [t.key for t in held]

    def read(self, now):
        """Read the stall counters of the tree, of every agent and of the running calls:
        the base a pressure event is set against. A trigger fires on the stall of the
        window before it, so the readings must be there already: a call can start and
        grow into its memory.high between two ticks, and its trigger can fire before the
        tick after its start. So the tree's and the agents' counters (the files whose
        triggers fire) are read on every tick, calls or not; a call's own counter starts
        at zero with its cgroup, so it needs no reading before its start."""
        e = self.e
        running = [t for a in e.ctl.agents.values() for t in a.tools.values() if not t.done]
        paths = set(e.watch.paths.values())
        paths |= {e.fs.path(t.cgroup, cgf.MEMORY_PRESSURE) for t in running}
        paths.discard(None)
        for path in paths:
            total = _reading(path)
            if total is not None:
                self.ledger.record(path, now, total)
        self.ledger.retain(paths)


def _reading(path):
    try:
        return psi.total_us(path)
    except (AgentdError, OSError, ValueError):
        return None
