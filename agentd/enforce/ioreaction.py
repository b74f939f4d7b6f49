"""I/O pressure on the ladder: each tick, from the sampler's readings of the agents'
io.pressure and the calls' io.stat, the call whose disk traffic stalls a higher-priority
agent (iopressure.blame) is pressure on its own agent, with a reason naming both.

A mixin of the Enforcer (enforcer.py), like reaction.py: it reads the enforcer's policy
and agents and raises pressure through `_pressure`; the ladder then acts on the calls of
the culprit's agent, busiest on disk first. Only while `io.ladder_stall_us` is set (the
sampler reads nothing for it otherwise).
"""

from .iopressure import AgentStall, CallIo, Window, blame, is_busy


class IoReaction:
    io_windows = None             # (stall, bytes, operations) Windows, made on first use
    io_rates = {}                 # tool key -> bytes/s of the calls that move data (ladder candidates)

    def _io_tick(self, snapshot):
        threshold = self.policy.io.ladder_stall_us
        if threshold is None or not snapshot.io_stall:
            self.io_windows, self.io_rates = None, {}
            return None
        span = self.policy.pressure.psi_window_us / 1e6
        if self.io_windows is None or self.io_windows[0].span_s != span:
            self.io_windows = (Window(span), Window(span), Window(span))
        stall_w, bytes_w, ops_w = self.io_windows
        now = snapshot.mono
        stalls, calls = [], []
        for agent in list(self.ctl.agents.values()):
            total = snapshot.io_stall.get(agent.agent_id)
            g = None if total is None else stall_w.add(agent.agent_id, now, total)
            if g:
                # Over a little more than the window (the oldest sample kept): scaled to it.
                stalls.append(AgentStall(agent.agent_id, agent.priority, int(g[0] * min(1.0, span / g[1])), span))
            for tool in list(agent.tools.values()):
                moved = snapshot.io.get(tool.key)
                if moved is None or tool.done:
                    continue
                gb, go = bytes_w.add(tool.key, now, moved[0]), ops_w.add(tool.key, now, moved[1])
                if gb and go:
                    calls.append(CallIo(tool.key, agent.agent_id, agent.priority, tool.plan.priority,
                                        gb[0] / gb[1], go[0] / go[1]))
        stall_w.keep(snapshot.io_stall)
        bytes_w.keep(snapshot.io)
        ops_w.keep(snapshot.io)
        self.io_rates = {c.key: c.bytes_per_s for c in calls if is_busy(c)}
        b = blame(stalls, calls, threshold)
        if b is not None:
            self.counters["io_pressure_total"] = self.counters.get("io_pressure_total", 0) + 1
            self._pressure(b.culprit_agent, now, b.reason, io=True)
        return b
