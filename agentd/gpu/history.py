"""GPU-memory forecasts by tool-call signature: agentd's forecaster over its own history file.

The host-memory forecaster (agentd.forecast) already learns "how much does this command
need" by signature; GPU memory is the same question about another resource, so this wraps
the same Forecaster and HistoryStore around a separate file (`gpu-history.sqlite` in the
state directory) whose peak_bytes column holds a call's GPU-memory peak. Only calls that
held GPU memory are recorded: the history then also answers "does this command use a GPU
at all", which `device: auto` classes rely on.
"""

import logging
import os
import time

from ..forecast import Forecast, Forecaster, HistoryError, ToolCallRecord, signature
from ..forecast.model import MiB
from ..forecast.resource import ResourceForecasts

log = logging.getLogger("agentd.gpu")

HISTORY_FILE = "gpu-history.sqlite"
# A CUDA context alone holds a few hundred MiB on current drivers: no GPU call needs less.
FLOOR_BYTES = 256 * MiB
# With no history, a GPU call is assumed to need this much (a small model or test suite).
PRIOR_BYTES = 2048 * MiB
PRUNE_KEEP = 20000


class GpuForecasts(ResourceForecasts):
    def __init__(self, state_dir, device_bytes, store=None):
        """`device_bytes`: the largest device's memory (no forecast above it)."""
        from ..forecast import DEFAULT_PRIORS
        budget = max(int(device_bytes), FLOOR_BYTES + 1)

        def forecaster(store):
            return Forecaster(store, "default", priors={k: PRIOR_BYTES for k in DEFAULT_PRIORS},
                              floor_bytes=FLOOR_BYTES, host_budget=budget)
        super().__init__(os.path.join(state_dir, HISTORY_FILE) if state_dir and store is None else None,
                         forecaster, f"GPU forecasts come from the {PRIOR_BYTES >> 20} MiB prior", store=store,
                         what="GPU history", logger=log)

    @property
    def mode(self):
        return "memory only" if self.store is None else "history"

    def unreadable(self, err, argv, tool_class, agent_id, agent_class):
        """A failed read answers with the prior this once; the file stays in use."""
        log.warning("GPU history unreadable (%s): using the prior", err)
        return Forecast(self.forecaster.priors.get("medium"), 0.0, "prior:unreadable")

    def record(self, argv, tool_class, agent_id, agent_class, peak_bytes, duration_s, action="", censored=False):
        """`censored`: the call was cut short (killed over its agent's GPU budget, ...), so
        `peak_bytes` is only a lower bound of its GPU need."""
        if peak_bytes <= 0 or self.store is None:
            return
        rec = ToolCallRecord.from_signature(signature(argv), ts=time.time(), peak_bytes=peak_bytes, agent=agent_id,
                                            agent_class=agent_class, tool_class=tool_class, argv=argv[:64],
                                            duration_s=duration_s, action=action, censored=bool(censored))
        if self.observe(rec) and self.store.count() > PRUNE_KEEP * 1.1:
            try:
                self.store.prune(PRUNE_KEEP)
            except HistoryError as err:
                self.disable(err)
