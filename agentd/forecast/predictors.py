"""Predictors: named strategies that turn a signature's history into a Forecast.

Each predictor registers under a name with `@register("name")`, takes its parameters as
keyword arguments and validates them in `__init__` (a bad policy fails at load, not in the
middle of an incident), and answers `predict(query) -> Forecast` cheaply from the history
store. The forecaster applies the floor and the host budget afterwards, so predictors only
say what they know.

Shipped:
- `quantile` (default): each level of the fallback chain — this agent's full signature, its
  coarse one, every agent's full and coarse, the program's, the tool class's — shrunk
  toward the next coarser one, each call counted once, and the calls that did real work
  (a peak above the floor) forecast apart from the rest: see QuantilePredictor.
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
    floor: int = 0              # the forecaster's floor: peaks at or below it are noise

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


# Which levels of the chain hold the calls of which finer ones: an agent's full signature
# is inside its coarse one and inside every agent's full one, and so on up to the class.
# A coarser level adds only the calls its finer levels do not already hold.
_NESTED = {"agent-coarse": ("agent-full",), "full": ("agent-full",), "coarse": ("agent-coarse", "full"),
           "agent-program": ("agent-coarse",), "program": ("coarse", "agent-program"), "class": ("program",)}


@register("quantile")
class QuantilePredictor:
    """Upper quantile of a hierarchical, recency-weighted mixture of a signature's peaks.

    Levels are mixed coarsest first; each finer level's recent peaks (weights
    0.5**(age/halflife), newest = age 0) are mixed with its parent's distribution, which
    counts as `prior_weight` observations; the class prior is the root, worth
    `class_prior_weight` calls. A level counts only the calls its finer levels do not already hold
    (an agent's three `pytest` runs are one piece of evidence, not one per level they appear
    at), so a signature seen twice still leans on its family.

    Heavy calls apart. Most calls of a command that ever does real work stay below the
    floor (a cached `pip install`, a test run that fails at import), and their peaks say
    nothing about how big the next real run is. So the calls above the floor form their
    own mixture, the same way, and the share of calls above the floor is estimated with
    the same shrinkage (`share_weight` pseudo-calls of the parent's share): an agent's two
    cheap `pip install` runs barely move the family's 60% to the floor. When that share is
    at least `heavy_share`, the forecast is the heavy mixture's upper quantile times
    `heavy_margin`: quantile `q` when this agent's own calls are in it, the wider
    (1 + q) / 2 when only other agents' are (a new repository's tests differ more from
    another's than from its own last run). Otherwise the forecast is the whole mixture's
    (1 + q) / 2 quantile with every peak times `margin`, as for any light command.
    """

    def __init__(self, q=0.9, margin=1.5, halflife=8.0, window=32, prior_weight=1.0,
                 heavy_margin=1.25, heavy_share=0.1, share_weight=2.0, class_prior_weight=0.25):
        _check(0 < q <= 1, "quantile", f"q must be in (0, 1], got {q!r}")
        _check(margin >= 1, "quantile", f"margin must be >= 1, got {margin!r}")
        _check(heavy_margin >= 1, "quantile", f"heavy_margin must be >= 1, got {heavy_margin!r}")
        _check(halflife > 0, "quantile", f"halflife must be > 0, got {halflife!r}")
        _check(int(window) >= 1, "quantile", f"window must be >= 1, got {window!r}")
        _check(prior_weight > 0, "quantile", f"prior_weight must be > 0, got {prior_weight!r}")
        _check(0 <= heavy_share <= 1, "quantile", f"heavy_share must be in [0, 1], got {heavy_share!r}")
        _check(share_weight > 0, "quantile", f"share_weight must be > 0, got {share_weight!r}")
        _check(class_prior_weight > 0, "quantile", f"class_prior_weight must be > 0, got {class_prior_weight!r}")
        self.q, self.margin, self.halflife = float(q), float(margin), float(halflife)
        self.window, self.k = int(window), float(prior_weight)
        self.heavy_margin, self.heavy_share, self.share_k = float(heavy_margin), float(heavy_share), float(share_weight)
        self.k0 = float(class_prior_weight)
        # Recency weights, newest first, and their running sums: the same for every question.
        self._weights = [0.5 ** (i / self.halflife) for i in range(self.window)]
        self._sums = [0.0]
        for w in self._weights:
            self._sums.append(self._sums[-1] + w)

    def predict(self, query):
        chain = _levels(query)
        got = [(idx, label, query.store.recent(level, key, self.window, agent=agent))
               for idx, (label, level, key, agent) in enumerate(chain)]
        counts = {label: len(samples) for _, label, samples in got}
        # Mixtures of (value, weight, observed): weights sum to 1; `observed` marks mass that
        # real calls' peaks put there (not the class prior's pseudo-observation).
        whole = [(float(query.prior()), 1.0, False)]
        heavy, heavy_label, share = None, None, None
        finest, finest_idx, n_finest = f"prior:{query.tool_class}", len(chain), 0
        for idx, label, samples in reversed(got):
            new = len(samples) - max((counts.get(c, 0) for c in _NESTED.get(label, ())), default=0)
            if new <= 0:
                continue            # nothing its finer levels do not hold
            w = self._weights[:len(samples)]
            n, n_new = self._sums[len(samples)], self._sums[new]
            # The class prior is a guess, worth `class_prior_weight` calls against the number
            # of calls seen (not their recency weights, at most ~11.5): a few calls of a
            # class outweigh it, so an unlimited class is not forecast at the whole host
            # once its commands have been seen.
            evidence = n_new if len(whole) > 1 else new
            whole = _mix(whole, [(v * self.margin, wi, cut) for (v, cut), wi in zip(samples, w)], n, evidence,
                         self.k if len(whole) > 1 else self.k0)
            # A cut-off call was stopped on its way up: it counts as one that did real work.
            big = [(v, wi, cut) for (v, cut), wi in zip(samples, w) if cut or v > query.floor]
            n_big = sum(wi for _, wi, _ in big)
            n_big_new = n_big * n_new / n
            share = (n_big + 1) / (n + 2) if share is None else \
                (n_big_new + self.share_k * share) / (n_new + self.share_k)
            if big:
                heavy = _mix(heavy, big, n_big, n_big_new, self.k)
                heavy_label = label
            finest, finest_idx, n_finest = f"quantile:{label}({len(samples)})", idx, len(samples)
        conf = 0.0 if n_finest == 0 else _confidence(n_finest, finest_idx, len(chain))
        wide = (1.0 + self.q) / 2.0
        if heavy is not None and share >= self.heavy_share:
            q = self.q if heavy_label.startswith("agent-") else wide
            v = _mixture_quantile([(v, wi) for v, wi, _ in heavy], q) * self.heavy_margin
            return Forecast(int(v), conf, f"{finest}:above-floor")
        return Forecast(int(_mixture_quantile([(v, wi) for v, wi, _ in whole], wide)), conf, finest)


def _mix(parent, samples, n, n_new, k):
    """A level's (value, weight, censored) samples mixed over its parent's mixture (None:
    none yet). The level speaks with weight n_new / (n_new + k): only its calls that no
    finer level holds count as its own evidence. Censored samples are spread over the
    observed tail (_redistribute)."""
    own = 1.0 if parent is None else n_new / (n_new + k)
    complete = [(v, own * wi / n, True) for v, wi, cut in samples if not cut]
    cut = [(v, own * wi / n) for v, wi, cut in samples if cut]
    rest = [] if parent is None else [(v, (1.0 - own) * wi, real) for v, wi, real in parent]
    return _redistribute(complete + rest, cut)


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
