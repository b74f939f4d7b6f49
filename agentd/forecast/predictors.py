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

Censored peaks. A call that was killed, OOM-killed, throttled or held at memory.max
(forecast/censoring.py) never showed its whole need: its recorded peak is a lower bound.
Counting it as a complete peak biases every later forecast of that command down — toward
the very limit that cut it off. Each predictor below says how it uses such a peak; none
ever reads it as less than its value.
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


# A censored peak (a lower bound) with nothing known above it counts this many times its
# value: a command cut off at some point is forecast 1.5x that point next time (before any
# margin), so one cut off again and again climbs geometrically until a run completes. The
# envelope predictors (max, last) have no distribution to spread a bound over and always
# use it.
CENSORED_STEP = 1.5


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
        # (value, weight, observed): weights sum to 1; `observed` marks mass that real
        # calls' peaks put there (not the class prior's pseudo-observation).
        dist = [(float(query.prior()), 1.0, False)]
        finest, finest_idx, n_finest = f"prior:{query.tool_class}", len(chain), 0
        for idx in range(len(chain) - 1, -1, -1):
            label, level, key, agent = chain[idx]
            samples = query.store.recent(level, key, self.window, agent=agent)
            if not samples:
                continue
            w = self._weights[:len(samples)]
            n = sum(w)
            own, parent = n / (n + self.k), self.k / (n + self.k)
            level_dist = [(v * self.margin, own * wi / n, True) for (v, cut), wi in zip(samples, w) if not cut] + \
                         [(v, parent * wi, real) for v, wi, real in dist]
            cut = [(v * self.margin, own * wi / n) for (v, c), wi in zip(samples, w) if c]
            dist = _redistribute(level_dist, cut)
            finest, finest_idx, n_finest = f"quantile:{label}({len(samples)})", idx, len(samples)
        v = _mixture_quantile([(v, wi) for v, wi, _ in dist], self.q)
        conf = 0.0 if n_finest == 0 else _confidence(n_finest, finest_idx, len(chain))
        return Forecast(int(v), conf, finest)


def _redistribute(dist, censored):
    """Add censored observations (bound, weight) to the mixture `dist` of (value, weight,
    observed) entries.

    A censored peak says only "at least this much" (its bound: the sample times the margin,
    as a complete peak would enter). Its weight is spread over the observed mass at or above
    the bound, in proportion: the call is taken to behave like the calls that are known to
    have got that far — this level's complete peaks and the coarser levels' (the
    redistribute-to-the-right idea of the Kaplan-Meier estimator). The class prior's
    pseudo-observation is left out of that tail: it is not evidence of what such calls
    need, and for an unlimited class it would turn one throttle of a well-known 400 MiB
    command into a forecast of the whole host. Where nothing observed lies above the bound,
    the weight goes to CENSORED_STEP times the bound (an inflated lower bound). Either way
    the mass lands above the bound, never below it: a forecast learnt from a cut-off call
    is never smaller than the same history read as complete peaks. Bounds are taken against
    the mixture without the censored points, so their order does not matter."""
    if not censored:
        return dist
    # The spread weight is added to the tail's entries in place (no new entries), so the
    # mixture stays as long as the history behind it, level after level.
    extra = [0.0] * len(dist)
    out = []
    for bound, weight in censored:
        tail = [i for i, (v, w, real) in enumerate(dist) if real and v >= bound and w > 0]
        total = sum(dist[i][1] for i in tail)
        if total <= 0:
            out.append((bound * CENSORED_STEP, weight, True))
            continue
        for i in tail:
            extra[i] += weight * dist[i][1] / total
    return [(v, w + x, real) for (v, w, real), x in zip(dist, extra)] + out


def _mixture_quantile(dist, q):
    acc = 0.0
    pairs = sorted(dist)
    for v, w in pairs:
        acc += w
        if acc >= q - 1e-9:
            return v
    return pairs[-1][0]


def _at_least(sample):
    v, cut = sample
    return v * CENSORED_STEP if cut else v


@register("max")
class MaxPredictor:
    """The largest of the last `window` peaks at the first level with history, x margin
    (a censored peak counts CENSORED_STEP times its value)."""

    def __init__(self, window=16, margin=1.0):
        _check(int(window) >= 1, "max", f"window must be >= 1, got {window!r}")
        _check(margin >= 1, "max", f"margin must be >= 1, got {margin!r}")
        self.window, self.margin = int(window), float(margin)

    def predict(self, query):
        chain = _levels(query)
        for idx, (label, level, key, agent) in enumerate(chain):
            samples = query.store.recent(level, key, self.window, agent=agent)
            if samples:
                return Forecast(int(max(_at_least(s) for s in samples) * self.margin),
                                _confidence(len(samples), idx, len(chain)), f"max:{label}({len(samples)})")
        return Forecast(query.prior(), 0.0, f"prior:{query.tool_class}")


@register("last")
class LastPredictor:
    """The last observed peak of the most specific signature seen (no margin): a baseline
    (a censored one counts CENSORED_STEP times its value)."""

    def __init__(self):
        pass

    def predict(self, query):
        chain = _levels(query)
        for idx, (label, level, key, agent) in enumerate(chain):
            samples = query.store.recent(level, key, 1, agent=agent)
            if samples:
                return Forecast(int(_at_least(samples[0])), _confidence(1, idx, len(chain)), f"last:{label}")
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
