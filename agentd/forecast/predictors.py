"""Predictors: named strategies that turn a signature's history into a Forecast.

Each predictor registers under a name with `@register("name")`, takes its parameters as
keyword arguments and validates them in `__init__` (a bad policy fails at load, not in the
middle of an incident), and answers `predict(query) -> Forecast` cheaply from the history
store. The forecaster applies the floor and the host budget afterwards, so predictors only
say what they know.

Shipped:
- `quantile` (default): recency-weighted upper quantile (q 0.9) of the signature's peaks
  times a margin (1.5), each level of the fallback chain — this agent's full signature,
  its coarse one, every agent's full and coarse, the program's, the tool class's, the class
  prior — shrunk toward the next coarser one (2 pseudo-observations), so a signature seen
  once leans on its parents and a cold start is the class prior.
- `last`: the last observed peak of the most specific signature seen (a baseline).
- `max`: the largest of the last N peaks at the same fallback chain (a simple envelope).
- `fixed`: the class table alone (low 256 MiB / medium 1 GiB / high = host budget).
"""

from dataclasses import dataclass

from ..errors import AgentdError
from .model import MiB, Forecast

PREDICTORS = {}
# The predictor the daemon uses and the benchmark reports as its default; a policy's
# `predictor: default` means this one. Defined here, once; agentd.forecast re-exports it.
DEFAULT_PREDICTOR = "quantile"

# Class priors for a cold start: what a policy-less host assumes about a tool call it has
# never seen. `None` = unlimited, i.e. the host budget.
# The shipped policies' classes (interactive/normal/batch) map onto the same table.
DEFAULT_PRIORS = {"low": 256 * MiB, "medium": 1024 * MiB, "high": None,
                  "interactive": 256 * MiB, "normal": 1024 * MiB, "batch": None}


class PredictorError(AgentdError):
    """A predictor name or parameter is invalid (raised at construction)."""


@dataclass(frozen=True)
class Query:
    """What a predictor may look at for one forecast."""
    store: object               # HistoryStore
    sig: object                 # Signature
    tool_class: str
    agent: str | None
    priors: dict                # class -> bytes or None (unlimited)
    host_budget: int            # bytes a tool call could at most use on this host
    agent_class: str = ""
    now: float = 0.0            # caller's clock; shipped predictors weigh by call order

    def prior(self):
        v = self.priors.get(self.tool_class, self.priors.get("medium"))
        return self.host_budget if v is None else min(int(v), self.host_budget)


def register(name):
    """Class decorator: make a predictor available to `make_predictor(name, **args)`."""
    def deco(cls):
        if name in PREDICTORS:
            raise PredictorError(f"predictor {name!r} registered twice")
        cls.name = name
        PREDICTORS[name] = cls
        return cls
    return deco


def make_predictor(name, **args):
    """A predictor by registered name (`default` = DEFAULT_PREDICTOR), its args validated."""
    if name == "default":
        name = DEFAULT_PREDICTOR
    try:
        cls = PREDICTORS[name]
    except KeyError:
        raise PredictorError(f"unknown predictor {name!r}; known: {', '.join(sorted(PREDICTORS))}") \
            from None
    try:
        return cls(**args)
    except TypeError as err:
        raise PredictorError(f"predictor {name!r}: {err}") from None


def _check(cond, name, msg):
    if not cond:
        raise PredictorError(f"predictor {name!r}: {msg}")


def _levels(q):
    """The fallback chain: (label, level, key, agent) from most to least specific."""
    s = q.sig
    chain = []
    if q.agent is not None:
        chain += [("agent-full", "full", s.full, q.agent), ("agent-coarse", "coarse", s.coarse, q.agent)]
    chain += [("full", "full", s.full, None), ("coarse", "coarse", s.coarse, None)]
    if q.agent is not None:
        chain.append(("agent-program", "program", s.program, q.agent))
    chain += [("program", "program", s.program, None), ("class", "tool_class", q.tool_class, None)]
    return chain


def _confidence(n, level_index, n_levels):
    """More calls and a more specific level -> more confidence; 0 for a prior."""
    return round((n / (n + 2.0)) * (1.0 - level_index / (n_levels + 1.0)), 3)


@register("quantile")
class QuantilePredictor:
    """Recency-weighted upper quantile of a signature's peaks, shrunk toward coarser levels.

    The levels of the fallback chain are mixed, coarsest first: the class's peaks (or, with
    none, the class prior) form the base distribution; each finer level's own recent peaks
    (weights 0.5**(age/halflife), newest = age 0) are mixed with its parent's distribution,
    which counts as `prior_weight` observations. So a signature seen once leans mostly on
    its coarser levels (one cheap `pip install -e .` says little about the next), one seen
    often speaks for itself, and a cold start is the prior. Observed peaks enter times
    `margin` (the prior is a limit already); the forecast is the mixture's upper `q` quantile.
    """

    def __init__(self, q=0.9, margin=1.5, halflife=8.0, window=32, prior_weight=2.0):
        _check(0 < q <= 1, "quantile", f"q must be in (0, 1], got {q!r}")
        _check(margin >= 1, "quantile", f"margin must be >= 1, got {margin!r}")
        _check(halflife > 0, "quantile", f"halflife must be > 0, got {halflife!r}")
        _check(int(window) >= 1, "quantile", f"window must be >= 1, got {window!r}")
        _check(prior_weight > 0, "quantile", f"prior_weight must be > 0, got {prior_weight!r}")
        self.q, self.margin, self.halflife = float(q), float(margin), float(halflife)
        self.window, self.k = int(window), float(prior_weight)
        # Recency weights, newest first: the same for every question of a given length.
        self._weights = [0.5 ** (i / self.halflife) for i in range(self.window)]

    def predict(self, query):
        chain = _levels(query)
        dist = [(float(query.prior()), 1.0)]      # (value, weight), weights sum to 1
        finest, finest_idx, n_finest = f"prior:{query.tool_class}", len(chain), 0
        for idx in range(len(chain) - 1, -1, -1):
            label, level, key, agent = chain[idx]
            peaks = query.store.recent_peaks(level, key, self.window, agent=agent)
            if not peaks:
                continue
            w = self._weights[:len(peaks)]
            n = sum(w)
            own, parent = n / (n + self.k), self.k / (n + self.k)
            dist = [(v * self.margin, own * wi / n) for v, wi in zip(peaks, w)] + \
                   [(v, parent * wi) for v, wi in dist]
            finest, finest_idx, n_finest = f"quantile:{label}({len(peaks)})", idx, len(peaks)
        v = _mixture_quantile(dist, self.q)
        conf = 0.0 if n_finest == 0 else _confidence(n_finest, finest_idx, len(chain))
        return Forecast(int(v), conf, finest)


def _mixture_quantile(dist, q):
    acc = 0.0
    pairs = sorted(dist)
    for v, w in pairs:
        acc += w
        if acc >= q - 1e-9:
            return v
    return pairs[-1][0]


@register("max")
class MaxPredictor:
    """The largest of the last `window` peaks at the first level with history, x margin."""

    def __init__(self, window=16, margin=1.0):
        _check(int(window) >= 1, "max", f"window must be >= 1, got {window!r}")
        _check(margin >= 1, "max", f"margin must be >= 1, got {margin!r}")
        self.window, self.margin = int(window), float(margin)

    def predict(self, query):
        chain = _levels(query)
        for idx, (label, level, key, agent) in enumerate(chain):
            peaks = query.store.recent_peaks(level, key, self.window, agent=agent)
            if peaks:
                return Forecast(int(max(peaks) * self.margin),
                                _confidence(len(peaks), idx, len(chain)), f"max:{label}({len(peaks)})")
        return Forecast(query.prior(), 0.0, f"prior:{query.tool_class}")


@register("last")
class LastPredictor:
    """The last observed peak of the most specific signature seen (no margin): a baseline."""

    def __init__(self):
        pass

    def predict(self, query):
        chain = _levels(query)
        for idx, (label, level, key, agent) in enumerate(chain):
            peaks = query.store.recent_peaks(level, key, 1, agent=agent)
            if peaks:
                return Forecast(int(peaks[0]), _confidence(1, idx, len(chain)), f"last:{label}")
        return Forecast(query.prior(), 0.0, f"prior:{query.tool_class}")


@register("fixed")
class FixedPredictor:
    """The class table alone; `high` (unlimited) means the host budget."""

    def __init__(self, table=None):
        if table is not None:
            _check(isinstance(table, dict) and all(
                v is None or (isinstance(v, int) and v > 0) for v in table.values()),
                "fixed", "table must map class -> positive bytes or None (unlimited)")
        self.table = table

    def predict(self, query):
        priors = self.table if self.table is not None else DEFAULT_PRIORS
        v = priors.get(query.tool_class, priors.get("medium"))
        v = query.host_budget if v is None else min(int(v), query.host_budget)
        return Forecast(v, 0.0, f"fixed:{query.tool_class}")
