"""Every metric agentd can export, named once: name, type, labels, unit, source, help.

The collector builds its families from these entries (so a name cannot drift between
the code and the documentation) and `render_table()` writes `CATALOG.md`, the table the
README carries. A test checks that the collector, fed by every source, emits exactly
these names.

Naming follows node_exporter/cAdvisor habits: `agentd_` prefix, base units (bytes,
seconds, ratios 0..1), counters end in `_total`. Labels stay bounded: agent (bounded by
the agents running now), agent_class/tool_class (bounded by the policy), action, reason
(normalised, capped), outcome, event, resource-like enums. Never a tool-call id.
"""

import dataclasses

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

# The memory.events keys exported (cgroup v2 names them; "oom_group_kill" is left out: rare, per-group).
MEMORY_EVENT_KEYS = ("low", "high", "max", "oom", "oom_kill")

# Histogram buckets, in base units.
MEMORY_BUCKETS = tuple(float(2 ** k) for k in range(24, 37))          # 16 MiB .. 64 GiB
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
REACTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# actual peak / forecast peak: 1 = exact, below 1 = over-forecast (memory reserved for nothing),
# above 1 = under-forecast (the call outgrew what admission and limits planned for). A ratio,
# not a signed error: Prometheus histograms with negative buckets carry no _sum/_count.
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
ERROR_BYTES_BUCKETS = tuple(float(2 ** k) for k in range(20, 35, 2))   # 1 MiB .. 16 GiB


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str            # the exposed name (counters include `_total`)
    type: str
    labels: tuple
    help: str
    source: str          # where the value comes from (documentation)
    buckets: tuple = ()

    @property
    def family(self):
        """The name prometheus_client's families take (counters without `_total`)."""
        return self.name[: -len("_total")] if self.type == COUNTER else self.name


M = Metric
_AG = ("agent", "agent_class")

CATALOG = (
    # --- the daemon ---------------------------------------------------------------
    M("agentd_build_info", GAUGE, ("version",), "Always 1; the running agentd version.", "package"),
    M("agentd_start_time_seconds", GAUGE, (), "When the daemon started (Unix time).", "daemon"),
    M("agentd_mode_info", GAUGE, ("component", "mode"),
      "Always 1 per component: the mode each optional stage runs in (e.g. pressure psi-trigger/poll).",
      "hooks' modes()"),
    M("agentd_policy_reloads_total", COUNTER, ("outcome",), "Policy reloads, by outcome (ok, failed).",
      "`reload` events"),
    M("agentd_event_log_write_errors_total", COUNTER, (),
      "Event-log lines the file system refused (e.g. a full disk); tool calls go on without them.",
      "event log metric_stats()"),
    M("agentd_event_log_dropped_total", COUNTER, (),
      "Event-log lines held back because one agent wrote faster than its share of the log.",
      "event log metric_stats()"),
    M("agentd_api_connections_refused_total", COUNTER, ("reason",),
      "API connections closed or refused by the daemon, by reason: per_uid, total, not_in_agent, timeout, "
      "accept_error.",
      "API server metric_stats()"),
    # --- agents -----------------------------------------------------------------------
    M("agentd_agents_running", GAUGE, (), "Agents agentd manages now.", "controller"),
    M("agentd_agents_started_total", COUNTER, ("agent_class",), "Agents started, by class.",
      "`agent_start` events"),
    M("agentd_agent_memory_bytes", GAUGE, _AG,
      "Memory of each agent's cgroup: memory.current, or the sum of its processes' RSS without the "
      "memory controller.", "cgroupfs / procfs"),
    M("agentd_agent_memory_high_bytes", GAUGE, _AG,
      "memory.high of each agent's cgroup; absent when unlimited or without the memory controller.",
      "cgroupfs"),
    M("agentd_agent_memory_max_bytes", GAUGE, _AG,
      "memory.max of each agent's cgroup; absent when unlimited or without the memory controller.",
      "cgroupfs"),
    M("agentd_agent_memory_events_total", COUNTER, _AG + ("event",),
      "memory.events of each agent's cgroup (low, high, max, oom, oom_kill), hierarchical.", "cgroupfs"),
    M("agentd_agent_pressure_memory_waiting_seconds_total", COUNTER, _AG,
      "Time some of the agent's tasks waited for memory (memory.pressure `some total`).", "cgroupfs PSI"),
    M("agentd_agent_pressure_memory_stalled_seconds_total", COUNTER, _AG,
      "Time all of the agent's tasks stalled on memory (memory.pressure `full total`).", "cgroupfs PSI"),
    M("agentd_agent_pressure_cpu_waiting_seconds_total", COUNTER, _AG,
      "Time some of the agent's tasks waited for a CPU (cpu.pressure `some total`).", "cgroupfs PSI"),
    M("agentd_agent_pressure_cpu_stalled_seconds_total", COUNTER, _AG,
      "Time all of the agent's tasks stalled on CPU (cpu.pressure `full total`).", "cgroupfs PSI"),
    M("agentd_agent_pressure_io_waiting_seconds_total", COUNTER, _AG,
      "Time some of the agent's tasks waited for I/O (io.pressure `some total`).", "cgroupfs PSI"),
    M("agentd_agent_pressure_io_stalled_seconds_total", COUNTER, _AG,
      "Time all of the agent's tasks stalled on I/O (io.pressure `full total`).", "cgroupfs PSI"),
    # --- tool calls --------------------------------------------------------------------
    M("agentd_tool_calls_running", GAUGE, ("tool_class",), "Tool calls running now, by class.", "controller"),
    M("agentd_tool_calls_started_total", COUNTER, ("tool_class",), "Tool calls started, by class.",
      "controller"),
    M("agentd_tool_calls_finished_total", COUNTER, ("tool_class", "outcome"),
      "Tool calls finished, by class and outcome (ok, failed, signaled, killed, oom_killed, unknown).",
      "controller"),
    M("agentd_tool_call_memory_peak_bytes", HISTOGRAM, ("tool_class",),
      "Peak memory of finished tool calls (memory.peak, else the highest sample or maxrss).",
      "`tool_end` events", MEMORY_BUCKETS),
    M("agentd_tool_call_duration_seconds", HISTOGRAM, ("tool_class",), "Wall time of finished tool calls.",
      "`tool_end` events", DURATION_BUCKETS),
    M("agentd_tool_call_memory_events_total", COUNTER, ("tool_class", "event"),
      "memory.events of finished tool calls (low, high, max, oom, oom_kill), summed by class.",
      "`tool_end` events"),
    # --- forecast, admission, enforcement ------------------------------------------------
    M("agentd_forecast_peak_ratio", HISTOGRAM, ("tool_class",),
      "Actual peak / forecast peak of finished tool calls that had a forecast: 1 = exact, "
      "< 1 over-forecast, > 1 under-forecast.", "`tool_end` events", RATIO_BUCKETS),
    M("agentd_forecast_error_bytes", HISTOGRAM, ("tool_class",),
      "Absolute difference between actual and forecast peak of finished tool calls that had a forecast.", "`tool_end` events",
      ERROR_BYTES_BUCKETS),
    M("agentd_admission_wait_seconds", HISTOGRAM, ("tool_class", "outcome"),
      "Time queued tool calls waited for admission, by outcome (admitted, timeout, refused).",
      "`queue` action of `tool_end` events; `admission` events for refused calls", WAIT_BUCKETS),
    M("agentd_admission_waiting", GAUGE, (), "Tool calls waiting for admission now.",
      "enforcer metric_stats()"),
    M("agentd_enforcement_actions_total", COUNTER, ("action", "reason"),
      "Enforcement actions applied (throttle, restore, freeze, thaw, kill, kill_main), by normalised reason.",
      "`action` events"),
    M("agentd_enforcement_reaction_seconds", HISTOGRAM, ("action",),
      "Time from the trigger (PSI or BPF event) to the action applied.", "`action` events (after_trigger_s)",
      REACTION_BUCKETS),
    M("agentd_pressure_events_total", COUNTER, (), "Pressure events the enforcer received (PSI triggers or polls).",
      "enforcer metric_stats()"),
    M("agentd_pressure_own_stall_total", COUNTER, (),
      "PSI events ignored: the stall was tool calls agentd holds at their memory.high, not a shortage.",
      "enforcer metric_stats()"),
    M("agentd_reclaimed_bytes_total", COUNTER, (),
      "Bytes idle agents gave back through memory.reclaim (their memory.current before less after each step).",
      "reclaim metric_stats()"),
    M("agentd_reclaim_steps_total", COUNTER, (), "memory.reclaim writes on idle agents' own cgroups.",
      "reclaim metric_stats()"),
    # --- kernel programs and scheduling -----------------------------------------------------
    M("agentd_bpf_programs_loaded", GAUGE, ("program",), "1 for each BPF program family loaded and attached.",
      "monitor metric_stats()"),
    M("agentd_bpf_events_total", COUNTER, ("program", "event"),
      "Counters kept by the BPF programs themselves (e.g. lost ring-buffer records).", "monitor metric_stats()"),
    M("agentd_autodetect_total", COUNTER, ("event",),
      "Automatic tool-call detection: placed, adopted, housekeeping, errors, resumed_late.",
      "monitor metric_stats()"),
    M("agentd_network_egress_bytes_total", COUNTER, ("agent",),
      "Bytes an agent's limited cgroups sent on the shaped devices, each packet once, in its deepest "
      "limited cgroup (the egress BPF program's count; in nft mode the nftables rules' counters).",
      "network metric_stats()"),
    M("agentd_network_egress_packets_total", COUNTER, ("agent",),
      "Packets an agent's limited cgroups sent (each once, as the bytes).", "network metric_stats()"),
    M("agentd_network_egress_delayed_packets_total", COUNTER, ("agent",),
      "Packets held back to the agent's or its tool call's rate by a later departure (fq mode; 0 in the "
      "htb and nft modes, where htb queues them: see overlimits).",
      "network metric_stats()"),
    M("agentd_network_egress_drops_total", COUNTER, ("agent",),
      "Packets of an agent's limited cgroups dropped: fq mode, those whose departure lay past the horizon "
      "(a sender nothing slows, e.g. UDP); htb and nft modes, those their htb classes' queues dropped "
      "(the leaf qdisc's drops, else the class's).",
      "network metric_stats()"),
    M("agentd_network_egress_overlimits_total", COUNTER, ("agent",),
      "Times one of an agent's htb classes ran out of its rate or ceiling and held packets back (htb's "
      "overlimits; htb and nft modes, 0 in fq mode).",
      "network metric_stats()"),
    M("agentd_agent_io_read_bytes_total", COUNTER, ("agent",),
      "Bytes an agent's cgroup (all its processes, ended calls included) read from disks (io.stat rbytes).",
      "disk metric_stats()"),
    M("agentd_agent_io_written_bytes_total", COUNTER, ("agent",),
      "Bytes an agent's cgroup wrote to disks (io.stat wbytes).", "disk metric_stats()"),
    M("agentd_agent_io_reads_total", COUNTER, ("agent",),
      "Read operations an agent's cgroup sent to disks (io.stat rios).", "disk metric_stats()"),
    M("agentd_agent_io_writes_total", COUNTER, ("agent",),
      "Write operations an agent's cgroup sent to disks (io.stat wios).", "disk metric_stats()"),
    M("agentd_cpu_scheduler_mode", GAUGE, ("mode",),
      "1 for the CPU scheduling mode in use (sched_ext, cpu_weight, none).", "scheduler metric_stats()"),
    M("agentd_sched_ext_ejections_total", COUNTER, (),
      "Times the kernel ejected agentd's sched_ext scheduler (fallback to the fair class).",
      "scheduler metric_stats()"),
    # --- GPUs ------------------------------------------------------------------------------
    M("agentd_gpu_memory_used_bytes", GAUGE, ("gpu",), "GPU memory in use, per device index.",
      "gpu metric_stats()"),
    M("agentd_gpu_memory_total_bytes", GAUGE, ("gpu",), "GPU memory size, per device index.",
      "gpu metric_stats()"),
    M("agentd_gpu_utilization_ratio", GAUGE, ("gpu",), "GPU busy fraction (0..1), per device index.",
      "gpu metric_stats()"),
    M("agentd_agent_gpu_memory_bytes", GAUGE, ("agent", "gpu"), "GPU memory held by each agent's processes.",
      "gpu metric_stats()"),
    M("agentd_gpu_unattributed_memory_bytes", GAUGE, (),
      "GPU memory held by processes outside any agent.", "gpu metric_stats()"),
    M("agentd_gpu_placements_total", COUNTER, ("outcome",), "GPU placement decisions for tool calls, by outcome.",
      "gpu metric_stats()"),
    M("agentd_gpu_budget_actions_total", COUNTER, ("action",),
      "Actions on tool calls over their agent's GPU memory budget (notify, kill).", "gpu metric_stats()"),
    M("agentd_gpu_waiting", GAUGE, (), "Tool calls waiting for GPU room now.", "gpu metric_stats()"),
    M("agentd_gpu_queued_total", COUNTER, (), "Tool calls that had to wait for GPU room.", "gpu metric_stats()"),
    M("agentd_gpu_wait_seconds_total", COUNTER, (), "Time tool calls spent waiting for GPU room.",
      "gpu metric_stats()"),
)

BY_NAME = {m.name: m for m in CATALOG}


def render_table():
    """The markdown table of CATALOG.md and the README."""
    rows = ["| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
    for m in CATALOG:
        labels = ", ".join(f"`{x}`" for x in m.labels) or "-"
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} | {m.source} |")
    return "\n".join(rows) + "\n"


def render_catalog():
    return ("# agentd metrics\n\n"
            "Served on `/metrics` (default `127.0.0.1:9464`, policy `daemon.metrics_listen`).\n"
            "Generated from `agentd/metrics/catalog.py` (`python3 -m agentd.metrics.catalog > "
            "agentd/metrics/CATALOG.md`); a test keeps the two equal.\n"
            "Histograms expose `_bucket`, `_sum` and `_count`. Samples of a stage that does not run on a host "
            "are absent, never zero.\n\n" + render_table())


if __name__ == "__main__":
    print(render_catalog(), end="")
