"""One resource's forecasts by command signature: agentd's Forecaster over that resource's
own history file. Host memory (enforce/forecasting.py) and GPU memory (gpu/history.py)
are the same question about two resources ("how much does this command need"), so both
are this class with their own file, priors and floor; a new resource's forecasts are one
more.

A history that cannot be opened or used (full disk, read-only state dir, a corrupt file)
costs one warning: forecasts then come from the priors and agentd carries on.
"""

import logging
import os
import time

from .history import HistoryError, HistoryStore

log = logging.getLogger("agentd.forecast")


class ResourceForecasts:
    """`path`: the history file (":memory:" for one kept in memory, None for none);
    `forecaster`: a function store -> Forecaster (the resource's predictor, priors, floor
    and largest forecast); `lost`: what the warning says the resource falls back to."""

    def __init__(self, path, forecaster, lost, store=None, what="history", logger=log, batch=False):
        """`batch`: the store writes calls at flush() (the owner's tick), not one
        transaction per call (forecast/history.py)."""
        self.path = path
        self.lost = lost
        self.label = what
        self.log = logger
        self.warned = False
        self.store = store
        if store is None and path:
            try:
                if path != ":memory:":
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                self.store = HistoryStore(path, batch=batch)
            except (HistoryError, OSError) as err:
                self.disable(err)
        self.forecaster = forecaster(self.store)

    def disable(self, err):
        """Forecast from the priors from now on, saying so once."""
        if not self.warned:
            self.log.warning("%s disabled: %s; %s", self.label, err, self.lost)
            self.warned = True
        if self.store is not None:
            try:
                self.store.close()
            except Exception:
                pass
        self.store = None
        if getattr(self, "forecaster", None) is not None:
            self.forecaster.store = None

    def forecast(self, argv, tool_class, agent_id, agent_class):
        try:
            return self._forecast(argv, tool_class, agent_id, agent_class)
        except HistoryError as err:
            return self.unreadable(err, argv, tool_class, agent_id, agent_class)

    def _forecast(self, argv, tool_class, agent_id, agent_class):
        return self.forecaster.forecast(argv, tool_class=tool_class, agent_class=agent_class, now=time.time(),
                                        agent=agent_id)

    def unreadable(self, err, argv, tool_class, agent_id, agent_class):
        """The store failed a read: by default it is given up and the priors answer."""
        self.disable(err)
        return self._forecast(argv, tool_class, agent_id, agent_class)

    def observe(self, rec):
        """Learn one finished call (a ToolCallRecord); False when it could not be kept."""
        if self.store is None:
            return False
        try:
            self.forecaster.observe(rec, now=time.time())
            return True
        except HistoryError as err:
            self.disable(err)
            return False

    def flush(self):
        """Write the calls a batched store keeps waiting; a store that refuses them is
        given up, as at observe()."""
        if self.store is None:
            return
        try:
            self.store.flush()
        except HistoryError as err:
            self.disable(err)

    def close(self):
        self.flush()
        if self.store is not None:
            self.store.close()
            self.store = None
            self.forecaster.store = None
