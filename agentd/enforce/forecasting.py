"""The enforcer's side of forecasting: host-memory forecasts over their history file
(forecast/resource.py), recording finished calls, and live samples for re-forecasts.

A history that cannot be opened or written (full disk, read-only state dir) costs one
warning; agentd then forecasts from class priors and carries on.
"""

import collections
import logging
import os

from ..errors import AgentdError
from ..forecast import Forecast, Forecaster, ToolCallRecord, censored, signature
from ..forecast.resource import ResourceForecasts

log = logging.getLogger("agentd.enforce")

HISTORY_FILE = "history.sqlite"
SAMPLES_KEPT = 40                 # 20 s at the 0.5 s tick: more than the growth window


class Forecasting(ResourceForecasts):
    def __init__(self, policy, state_dir, host_memory):
        f = policy.forecast
        args = {"q": f.quantile} if f.predictor in ("default", "quantile") else {}

        def forecaster(store):
            try:
                return Forecaster(store, f.predictor, headroom=1.0, host_budget=host_memory or (64 << 30),
                                  predictor_args=args)
            except AgentdError as err:
                # A predictor name the forecaster does not know: the policy validated only its
                # spelling. Fall back to the default rather than enforce nothing.
                log.warning("forecast predictor %r unusable (%s): using the default", f.predictor, err)
                return Forecaster(store, "default", headroom=1.0, host_budget=host_memory or (64 << 30))
        super().__init__(os.path.join(state_dir, HISTORY_FILE) if state_dir else ":memory:", forecaster,
                         "forecasts come from class priors", what="tool-call history", logger=log,
                         batch=True)     # written at the enforcer's tick (flush)
        self.samples = {}         # tool key -> deque[(t, bytes)]

    def resize(self, host_memory):
        """The memory agentd manages changed: no forecast may exceed the new size (and
        a class without a prior, "unlimited", is forecast at it)."""
        if host_memory and host_memory > self.forecaster.floor:
            self.forecaster.host_budget = int(host_memory)

    @property
    def mode(self):
        return "off" if self.store is None else self.path

    def sample(self, key, t, value):
        d = self.samples.get(key)
        if d is None:
            d = self.samples[key] = collections.deque(maxlen=SAMPLES_KEPT)
        d.append((t, value))

    def reforecast(self, tool, limit_bytes):
        initial = tool.forecast if isinstance(tool.forecast, Forecast) else None
        samples = list(self.samples.get(tool.key, ()))
        if initial is None or not samples:
            return None
        return self.forecaster.reforecast(initial, samples, limit_bytes=limit_bytes)

    def record(self, tool, agent, result):
        self.samples.pop(tool.key, None)
        if self.store is None or result is None:
            return
        status = result.get("status") or {}
        actions = [a.get("action") for a in tool.actions if a.get("action") != "queue"]
        rec = ToolCallRecord.from_signature(
            signature(tool.argv), ts=tool.started, peak_bytes=int(result.get("memory_peak_bytes") or 0),
            agent=tool.agent_id, agent_class=getattr(agent, "agent_class", "") or "",
            tool_class=tool.plan.tool_class, argv=tool.argv[:64], duration_s=float(result.get("wall_s") or 0),
            cpu_s=float(result.get("cpu_s") or 0), exit_status=status.get("exit"),
            action=",".join(actions) or result.get("outcome", ""),
            censored=censored(result.get("outcome"), actions, result.get("memory_events")))
        self.observe(rec)
