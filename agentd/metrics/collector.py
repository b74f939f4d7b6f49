"""The agentd collector: one read-only pass over the daemon's state per scrape.

Sources, each optional (a stage that is absent or fails omits its samples, never the scrape):
- the controller (agents, tool calls, counters) and cgroupfs files of each agent
  (memory.high/max/events, memory/cpu/io.pressure), read through `ctl.fs`; each agent's
  memory from the sampler's latest tick (`app.sampler`, monitor/sampler.py);
- the event tally (metrics/tally.py) for histograms and counters of finished things;
- `metric_stats()` of every object in `app.hooks` (enforcer, monitor, scheduler, GPU),
  dicts with the keys documented in STATS_KEYS below, and their `modes()`;
- `app.metric_sources`: extra callables yielding metric families (kept for extensions).
Every family comes from catalog.py, so names and help texts are defined once.
"""

import logging
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import __version__
from ..kernel import cgroupfs as cgf
from ..kernel import psi
from .catalog import BY_NAME, COUNTER, GAUGE, MEMORY_EVENT_KEYS

log = logging.getLogger("agentd.metrics")

# What a stage's `metric_stats()` may return (all keys optional):
STATS_KEYS = {
    "admission_waiting": "int, calls waiting for admission now",
    "pressure_events": "int, pressure events received since start",
    "pressure_own_stall": "int, PSI events ignored as the stall of calls held at their memory.high",
    "bpf_programs": "{program: True/False loaded and attached}",
    "bpf_events": "{program: {event: count}} (e.g. read_stats() of each loaded object)",
    "autodetect": "{event: count} (placed, adopted, housekeeping, errors, resumed_late)",
    "cpu_scheduler": "str: sched_ext | cpu_weight | nice | none",
    "sched_ext_ejections": "int, ejections since start",
    "gpus": "[{gpu: index, memory_used_bytes, memory_total_bytes, utilization_ratio}]",
    "agent_gpu_memory": "{(agent, gpu): bytes}",
    "gpu_unattributed_bytes": "int, GPU memory of processes outside any agent",
    "gpu_placements": "{outcome: count}",
    "gpu_budget_actions": "{action: count}",
    "gpu_waiting": "int", "gpu_queued_total": "int", "gpu_wait_seconds_total": "float",
    "network_egress": "{agent: {bytes, packets, delayed, drops, overlimits}} of its limited cgroups",
    "reclaimed_bytes": "int, bytes idle agents gave back through memory.reclaim since start",
    "reclaim_steps": "int, memory.reclaim writes since start",
    "disk_io": "{agent: {rbytes, wbytes, rios, wios}} from its cgroup's io.stat",
}
# What the event log's and the API server's `metric_stats()` return (read the same way).
OWN_STATS_KEYS = {
    "event_log_write_errors_total": "int, event-log lines the file system refused (a full disk)",
    "event_log_dropped_total": "int, event-log lines held back by the per-agent rate limit",
    "api_connections_refused": "{reason: count} (per_uid, total, not_in_agent, timeout, accept_error)",
}

# Scalar keys -> metric, and {label: count} keys -> metric.
SCALARS = {"admission_waiting": "agentd_admission_waiting", "pressure_events": "agentd_pressure_events_total",
           "pressure_own_stall": "agentd_pressure_own_stall_total",
           "reclaimed_bytes": "agentd_reclaimed_bytes_total", "reclaim_steps": "agentd_reclaim_steps_total",
           "sched_ext_ejections": "agentd_sched_ext_ejections_total",
           "gpu_unattributed_bytes": "agentd_gpu_unattributed_memory_bytes", "gpu_waiting": "agentd_gpu_waiting",
           "gpu_queued_total": "agentd_gpu_queued_total", "gpu_wait_seconds_total": "agentd_gpu_wait_seconds_total",
           "event_log_write_errors_total": "agentd_event_log_write_errors_total",
           "event_log_dropped_total": "agentd_event_log_dropped_total"}
LABELLED = {"autodetect": "agentd_autodetect_total", "gpu_placements": "agentd_gpu_placements_total",
            "gpu_budget_actions": "agentd_gpu_budget_actions_total",
            "api_connections_refused": "agentd_api_connections_refused_total"}

PRESSURE = (("memory", cgf.MEMORY_PRESSURE), ("cpu", cgf.CPU_PRESSURE), ("io", cgf.IO_PRESSURE))


def family(name):
    m = BY_NAME[name]
    if m.type == GAUGE:
        return GaugeMetricFamily(m.family, m.help, labels=list(m.labels))
    if m.type == COUNTER:
        return CounterMetricFamily(m.family, m.help, labels=list(m.labels))
    return HistogramMetricFamily(m.family, m.help, labels=list(m.labels))


class Families:
    """Families created on first use, yielded in catalog order."""

    def __init__(self):
        self.f = {}

    def add(self, name, labels, value):
        fam = self.f.get(name) or self.f.setdefault(name, family(name))
        fam.add_metric([str(x) for x in labels], value)

    def add_hist(self, name, labels, buckets, total):
        fam = self.f.get(name) or self.f.setdefault(name, family(name))
        fam.add_metric([str(x) for x in labels], buckets, total)

    def __iter__(self):
        return (self.f[m] for m in BY_NAME if m in self.f)


def _limit(fs, cg, name):
    """A memory limit file in bytes; None when unlimited ("max") or absent."""
    if not fs.has(cg, name):
        return None
    text = fs.read(cg, name).strip()
    return None if text == "max" else int(text)


class AgentdCollector:
    def __init__(self, app, tally=None):
        self.app = app
        self.tally = tally

    def describe(self):
        return []

    def collect(self):
        fams = Families()
        for part in (self._daemon, self._controller, self._agents, self._tally, self._stages):
            try:
                part(fams)
            except Exception:
                log.exception("metrics: %s failed; its samples are omitted from this scrape", part.__name__)
        yield from fams
        for extra in getattr(self.app, "metric_sources", []):
            try:
                yield from extra()
            except Exception:
                log.exception("metrics: extra source %r failed", extra)

    def _daemon(self, fams):
        fams.add("agentd_build_info", [__version__], 1)
        fams.add("agentd_start_time_seconds", [], float(getattr(self.app, "started", time.time())))
        for h in self.app.hooks:
            for comp, mode in h.modes().items():
                # A label value is one series for as long as it lasts: only a plain mode
                # word belongs there (a dict or a count would make a series per change).
                if isinstance(mode, str):
                    fams.add("agentd_mode_info", [comp, mode], 1)
                else:
                    log.warning("metrics: %s.modes()[%r] is not a mode name; omitted", type(h).__name__, comp)

    def _controller(self, fams):
        ctl = self.app.ctl
        agents = list(ctl.agents.values())
        fams.add("agentd_agents_running", [], len(agents))
        running = {}
        for a in agents:
            for t in list(a.tools.values()):
                if not t.done:
                    running[t.plan.tool_class] = running.get(t.plan.tool_class, 0) + 1
        for k, v in sorted(running.items()):
            fams.add("agentd_tool_calls_running", [k], v)
        for k, v in sorted(ctl.counters["tool_started"].items()):
            fams.add("agentd_tool_calls_started_total", [k], v)
        for (k, o), v in sorted(ctl.counters["tool_finished"].items()):
            fams.add("agentd_tool_calls_finished_total", [k, o], v)

    def _agents(self, fams):
        ctl = self.app.ctl
        for a in list(ctl.agents.values()):
            try:
                self._agent(fams, ctl, a)
            except Exception as err:      # a vanished cgroup omits the agent, never fails the scrape
                log.debug("metrics: agent %s: %s", a.agent_id, err)

    def _agent(self, fams, ctl, a):
        fs, lab = ctl.fs, [a.agent_id, a.agent_class]
        mem = self.app.sampler.agent_memory(a)        # the latest tick's reading (monitor/sampler.py)
        if mem is not None:
            fams.add("agentd_agent_memory_bytes", lab, mem)
        for name, fname in (("agentd_agent_memory_high_bytes", cgf.MEMORY_HIGH),
                            ("agentd_agent_memory_max_bytes", cgf.MEMORY_MAX)):
            val = _limit(fs, a.cgroup, fname)
            if val is not None:
                fams.add(name, lab, val)
        if fs.has(a.cgroup, cgf.MEMORY_EVENTS):
            ev = fs.read_flat_keyed(a.cgroup, cgf.MEMORY_EVENTS)
            for key in MEMORY_EVENT_KEYS:
                if key in ev:
                    fams.add("agentd_agent_memory_events_total", lab + [key], ev[key])
        for res, fname in PRESSURE:
            if not fs.has(a.cgroup, fname):
                continue
            p = psi.parse(fs.read(a.cgroup, fname))
            for kind, word in (("some", "waiting"), ("full", "stalled")):
                if "total" in p.get(kind, {}):
                    fams.add(f"agentd_agent_pressure_{res}_{word}_seconds_total", lab, p[kind]["total"] / 1e6)

    def _tally(self, fams):
        if self.tally is None:
            return
        counters, hists = self.tally.snapshot()
        for name, series in counters.items():
            for labels, v in sorted(series.items()):
                fams.add(name, labels, v)
        for name, series in hists.items():
            for labels, (buckets, total) in sorted(series.items()):
                fams.add_hist(name, labels, buckets, total)

    def _stages(self, fams):
        stats = {}
        # The event log and the API server keep counters of their own, as the stages do.
        sources = [getattr(self.app, "events", None), getattr(self.app, "server", None)]
        for h in [s for s in sources if s is not None] + list(self.app.hooks):
            try:
                stats.update(h.metric_stats() or {})
            except Exception:
                log.exception("metrics: %s.metric_stats() failed", type(h).__name__)
        for key, name in SCALARS.items():
            if isinstance(stats.get(key), (int, float)):
                fams.add(name, [], stats[key])
        for key, name in LABELLED.items():
            for label, n in sorted((stats.get(key) or {}).items()):
                fams.add(name, [label], n)
        for prog, loaded in sorted((stats.get("bpf_programs") or {}).items()):
            fams.add("agentd_bpf_programs_loaded", [prog], 1 if loaded else 0)
        for prog, evs in sorted((stats.get("bpf_events") or {}).items()):
            for ev, n in sorted(evs.items()):
                fams.add("agentd_bpf_events_total", [prog, ev], n)
        for agent, c in sorted((stats.get("network_egress") or {}).items()):
            fams.add("agentd_network_egress_bytes_total", [agent], c["bytes"])
            fams.add("agentd_network_egress_packets_total", [agent], c["packets"])
            fams.add("agentd_network_egress_delayed_packets_total", [agent], c["delayed"])
            fams.add("agentd_network_egress_drops_total", [agent], c["drops"])
            fams.add("agentd_network_egress_overlimits_total", [agent], c.get("overlimits", 0))
        for agent, c in sorted((stats.get("disk_io") or {}).items()):
            fams.add("agentd_agent_io_read_bytes_total", [agent], c["rbytes"])
            fams.add("agentd_agent_io_written_bytes_total", [agent], c["wbytes"])
            fams.add("agentd_agent_io_reads_total", [agent], c["rios"])
            fams.add("agentd_agent_io_writes_total", [agent], c["wios"])
        if stats.get("cpu_scheduler"):
            fams.add("agentd_cpu_scheduler_mode", [stats["cpu_scheduler"]], 1)
        for g in stats.get("gpus") or []:
            idx = g.get("gpu")
            for key, name in (("memory_used_bytes", "agentd_gpu_memory_used_bytes"),
                              ("memory_total_bytes", "agentd_gpu_memory_total_bytes"),
                              ("utilization_ratio", "agentd_gpu_utilization_ratio")):
                if g.get(key) is not None:
                    fams.add(name, [idx], g[key])
        for (agent, gpu), n in sorted((stats.get("agent_gpu_memory") or {}).items()):
            fams.add("agentd_agent_gpu_memory_bytes", [agent, gpu], n)
