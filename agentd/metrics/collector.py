"""The agentd collector: one read-only pass over the controller per scrape.

Labels are bounded: agent (bounded by running agents), agent/tool class, outcome,
action, reason. Never a tool-call id.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..kernel import cgroupfs as cgf


class AgentdCollector:
    def __init__(self, app):
        self.app = app

    def describe(self):
        return []

    def collect(self):
        ctl = self.app.ctl
        agents = list(ctl.agents.values())
        g = GaugeMetricFamily("agentd_agents_running", "Agents agentd manages now.")
        g.add_metric([], len(agents))
        yield g
        g = GaugeMetricFamily("agentd_tool_calls_running", "Tool calls running now, by class.",
                              labels=["tool_class"])
        running = {}
        for a in agents:
            for t in a.tools.values():
                if not t.done:
                    running[t.plan.tool_class] = running.get(t.plan.tool_class, 0) + 1
        for k, v in sorted(running.items()):
            g.add_metric([k], v)
        yield g
        c = CounterMetricFamily("agentd_tool_calls_started", "Tool calls started, by class.", labels=["tool_class"])
        for k, v in sorted(ctl.counters["tool_started"].items()):
            c.add_metric([k], v)
        yield c
        c = CounterMetricFamily("agentd_tool_calls_finished", "Tool calls finished, by class and outcome.",
                                labels=["tool_class", "outcome"])
        for (k, o), v in sorted(ctl.counters["tool_finished"].items()):
            c.add_metric([k, o], v)
        yield c
        mem = GaugeMetricFamily("agentd_agent_memory_bytes",
                                "Memory of each agent's cgroup (memory.current; RSS sum without the memory controller).",
                                labels=["agent", "agent_class"])
        for a in agents:
            val = None
            try:
                if ctl.fs.has(a.cgroup, cgf.MEMORY_CURRENT):
                    val = ctl.fs.read_int(a.cgroup, cgf.MEMORY_CURRENT)
                elif ctl.sampler:
                    pids = []
                    for sub in (a.main_cgroup,) + tuple(t.cgroup for t in a.tools.values() if not t.done):
                        try:
                            pids += ctl.fs.procs(sub)
                        except Exception:
                            pass
                    val = ctl.sampler(pids)
            except Exception:
                val = None       # a vanished cgroup omits the sample, never fails the scrape
            if val is not None:
                mem.add_metric([a.agent_id, a.agent_class], val)
        yield mem
        for extra in getattr(self.app, "metric_sources", []):
            yield from extra()
