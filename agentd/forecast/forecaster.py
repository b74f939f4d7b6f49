"""The forecaster: one object the daemon asks "how much will this tool call need?".

Pure code over the history store: the caller passes time in and records finished calls.
At a tool call's start `forecast()` runs the configured predictor and applies the floor
(no limit below what a tiny command plus measurement noise needs) and the host budget (no
forecast above what the host could give). While the call runs `reforecast()` turns its live
memory samples into a growth rate, a projected peak and the time left until its limit, so
the enforcer can raise a limit before the call hits it or act before the host runs out.
"""

from .history import HistoryError
from .model import MiB, Forecast, LiveForecast
from .predictors import DEFAULT_PREDICTOR, DEFAULT_PRIORS, PredictorError, Query, make_predictor
from .signature import Signature, signature

# The smallest forecast agentd makes: above the apparent growth of in-process tool calls in
# the shared traces (p99.5 19 MiB: the agent's own allocator noise, not the tool) and about
# a Python interpreter with a few imports. A memory.high below this only causes reclaim.
FLOOR_BYTES = 32 * MiB


class Forecaster:
    def __init__(self, store, predictor=DEFAULT_PREDICTOR, priors=None, *, headroom=1.0,
                 floor_bytes=FLOOR_BYTES, host_budget=64 << 30, predictor_args=None,
                 growth_window_s=5.0, horizon_s=10.0):
        """`store`: HistoryStore (or None: priors only). `priors`: class -> bytes or None
        (= unlimited = `host_budget`), merged over DEFAULT_PRIORS. `headroom` multiplies
        every forecast (1.0: the predictor's own margin is the whole margin)."""
        if headroom < 1:
            raise PredictorError(f"headroom must be >= 1, got {headroom!r}")
        if host_budget <= floor_bytes:
            raise PredictorError(f"host budget {host_budget} must exceed the floor {floor_bytes}")
        self.store = store
        self.predictor = make_predictor(predictor, **(predictor_args or {}))
        self.predictor_name = DEFAULT_PREDICTOR if predictor == "default" else predictor
        self.priors = {**DEFAULT_PRIORS, **(priors or {})}
        self.headroom, self.floor, self.host_budget = float(headroom), int(floor_bytes), int(host_budget)
        self.growth_window_s, self.horizon_s = float(growth_window_s), float(horizon_s)

    def forecast(self, argv, tool_class=None, agent_class="", now=0.0, agent=None):
        """Forecast of a starting tool call. `argv`: list, command string or Signature.
        `tool_class`: the policy's class, else the signature's default. `agent`: the agent
        whose own history is looked up first. `agent_class` and `now` reach the predictor
        (the shipped ones weigh history by call order, not age). Never raises on a broken
        history: it answers from the class prior and says so in `source`."""
        sig = argv if isinstance(argv, Signature) else signature(argv)
        cls = tool_class or sig.tool_class
        q = Query(self.store, sig, cls, agent, self.priors, self.host_budget, agent_class, now, self.floor)
        if self.store is None:
            f = Forecast(q.prior(), 0.0, f"prior:{cls}")
        else:
            try:
                f = self.predictor.predict(q)
            except HistoryError:
                f = Forecast(q.prior(), 0.0, f"prior:{cls}:no-history")
        return self._bound(f)

    def observe(self, record, now=0.0):
        """Learn from a finished call (a ToolCallRecord). Raises HistoryError when the store
        cannot take it; the caller logs that once and carries on without history."""
        if self.store is not None:
            self.store.add(record)

    def reforecast(self, initial, samples, limit_bytes=None, now=None):
        """LiveForecast of a running call from its (t, bytes) samples, oldest first.

        Growth rate: least-squares slope of the samples in the last `growth_window_s`
        (0 when flat or falling, so a call that freed memory is not projected to grow).
        Projected peak: the larger of the start forecast, the highest sample so far, and the
        current value plus `horizon_s` of growth at that rate. Confidence falls when the call
        has already outgrown its start forecast."""
        if not samples:
            return LiveForecast(initial.peak_bytes, 0.0, None, initial.confidence)
        t_now = samples[-1][0] if now is None else now
        current = samples[-1][1]
        seen = max(b for _, b in samples)
        recent = [(t, b) for t, b in samples if t >= t_now - self.growth_window_s]
        rate = max(0.0, _slope(recent))
        projected = current + rate * self.horizon_s
        peak = self._bound(Forecast(int(max(initial.peak_bytes, seen, projected)), 0, "")).peak_bytes
        to_limit = None
        if limit_bytes is not None:
            if current >= limit_bytes:
                to_limit = 0.0
            elif rate > 0:
                to_limit = (limit_bytes - current) / rate
        live = min(1.0, len(recent) / 10.0)
        conf = 0.5 * initial.confidence + 0.5 * live
        if seen > initial.peak_bytes:
            conf *= 0.5         # the start forecast was wrong: trust the projection less
        return LiveForecast(peak, rate, to_limit, round(conf, 3))

    def _bound(self, f):
        v = int(f.peak_bytes * self.headroom)
        v = min(max(v, self.floor), self.host_budget)
        return Forecast(v, f.confidence, f.source)


def _slope(points):
    """Least-squares slope in bytes/s; 0 for fewer than two distinct times."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mb = sum(b for _, b in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den <= 0:
        return 0.0
    return sum((t - mt) * (b - mb) for t, b in points) / den
