"""Counters and histograms built from the event log as events are emitted.

Every stage already writes one event per thing that happened (tool_end, action,
admission, reload, ...); tallying those events gives the metrics without each stage
keeping its own counters, and the event fields double as the contract (documented in
CATALOG.md). `on_event` runs on the daemon's loop thread, `snapshot()` on the scrape
thread: one lock between them.
"""

import bisect
import re
import threading

from .catalog import BY_NAME, MEMORY_EVENT_KEYS

MAX_REASONS = 32          # distinct reason labels; later ones become "other"


class Hist:
    """A cumulative histogram per label tuple (what HistogramMetricFamily wants)."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.series = {}          # labels -> [counts per bucket + inf, sum]

    def observe(self, labels, value):
        counts, _ = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.series[labels][1][0] += value

    def export(self):
        """{labels: ([(le, cumulative count), ...], sum)} with le as strings, +Inf last."""
        out = {}
        for labels, (counts, total) in self.series.items():
            acc, rows = 0, []
            for le, n in zip(self.buckets + (float("inf"),), counts):
                acc += n
                rows.append(("+Inf" if le == float("inf") else repr(float(le)), acc))
            out[labels] = (rows, total[0])
        return out


def normalise_reason(reason, known):
    """A bounded label from a free-text reason: "memory pressure: some avg10=..." -> "memory_pressure"."""
    text = str(reason or "none").lower()
    text = re.split(r"[:(\[,;]", text, 1)[0]
    token = re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:40] or "none"
    if token not in known:
        if len(known) >= MAX_REASONS:
            return "other"
        known.add(token)
    return token


class EventTally:
    def __init__(self):
        self._lock = threading.Lock()
        self._reasons = set()
        self.counters = {}        # metric name -> {labels: value}
        self.hists = {m: Hist(BY_NAME[m].buckets) for m in (
            "agentd_tool_call_memory_peak_bytes", "agentd_tool_call_duration_seconds",
            "agentd_forecast_peak_ratio", "agentd_forecast_error_bytes", "agentd_admission_wait_seconds",
            "agentd_enforcement_reaction_seconds")}

    def _inc(self, name, labels, by=1):
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0) + by

    def on_event(self, rec):
        fn = getattr(self, "_ev_" + str(rec.get("event")), None)
        if fn is None:
            return
        with self._lock:
            try:
                fn(rec)
            except (TypeError, ValueError):
                pass           # a malformed event loses its sample, never the daemon's loop

    def _ev_agent_start(self, rec):
        self._inc("agentd_agents_started_total", (str(rec.get("agent_class")),))

    def _ev_tool_end(self, rec):
        cls = str(rec.get("tool_class"))
        peak = rec.get("memory_peak_bytes")
        if peak:
            self.hists["agentd_tool_call_memory_peak_bytes"].observe((cls,), float(peak))
        if rec.get("wall_s") is not None:
            self.hists["agentd_tool_call_duration_seconds"].observe((cls,), float(rec["wall_s"]))
        for key, n in (rec.get("memory_events") or {}).items():
            if key in MEMORY_EVENT_KEYS and n:
                self._inc("agentd_tool_call_memory_events_total", (cls, key), int(n))
        for act in rec.get("actions") or []:
            # The enforcer records a call's admission wait as a "queue" action on the call.
            if isinstance(act, dict) and act.get("action") == "queue" and act.get("seconds") is not None:
                self.hists["agentd_admission_wait_seconds"].observe(
                    (cls, "timeout" if act.get("timed_out") else "admitted"), float(act["seconds"]))
        fc = rec.get("forecast_bytes")
        if fc and peak:
            self.hists["agentd_forecast_peak_ratio"].observe((cls,), float(peak) / fc)
            self.hists["agentd_forecast_error_bytes"].observe((cls,), abs(float(peak) - fc))

    def _ev_action(self, rec):
        action = str(rec.get("action"))
        if rec.get("dry_run"):
            action = "dry_run_" + action
        self._inc("agentd_enforcement_actions_total", (action, normalise_reason(rec.get("reason"), self._reasons)))
        if rec.get("after_trigger_s") is not None:
            self.hists["agentd_enforcement_reaction_seconds"].observe((action,), float(rec["after_trigger_s"]))

    def _ev_admission(self, rec):
        """A call that never started (refused after waiting): it has no tool_end to carry its wait."""
        self.hists["agentd_admission_wait_seconds"].observe(
            (str(rec.get("tool_class")), str(rec.get("outcome") or "refused")), float(rec.get("wait_s") or 0.0))

    def _ev_reload(self, rec):
        self._inc("agentd_policy_reloads_total", ("ok" if rec.get("ok") else "failed",))

    def snapshot(self):
        """(counters, histograms) copies for one scrape."""
        with self._lock:
            return ({k: dict(v) for k, v in self.counters.items()},
                    {k: h.export() for k, h in self.hists.items()})
