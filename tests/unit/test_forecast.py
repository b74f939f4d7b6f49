"""Predictors and the forecaster on literal histories: registry, cold start, shrinkage to
coarser levels, floor and budget, live re-forecast."""

import pytest

from agentd.forecast import (DEFAULT_PREDICTOR, FLOOR_BYTES, PREDICTORS, Forecast, Forecaster,
                             HistoryError, HistoryStore, PredictorError, ToolCallRecord,
                             make_predictor, register, signature)

MiB = 1 << 20
BUDGET = 8 << 30


def fc(predictor=DEFAULT_PREDICTOR, store=None, **kw):
    return Forecaster(HistoryStore() if store is None else store, predictor,
                      host_budget=BUDGET, **kw)


def learn(f, cmd, peaks, agent="a"):
    for p in peaks:
        f.observe(ToolCallRecord.from_signature(signature(cmd), ts=0, peak_bytes=p, agent=agent))


def test_registry_has_the_documented_predictors_and_default():
    assert {"quantile", "last", "fixed", "max"} <= set(PREDICTORS)
    assert DEFAULT_PREDICTOR in PREDICTORS
    assert type(make_predictor("default")) is PREDICTORS[DEFAULT_PREDICTOR]


def test_unknown_predictor_and_bad_args_fail_at_construction():
    with pytest.raises(PredictorError, match="unknown predictor"):
        make_predictor("crystal-ball")
    with pytest.raises(PredictorError, match="q must be"):
        make_predictor("quantile", q=1.5)
    with pytest.raises(PredictorError, match="margin"):
        make_predictor("quantile", margin=0.5)
    with pytest.raises(PredictorError):
        make_predictor("quantile", nonsense=1)
    with pytest.raises(PredictorError):
        make_predictor("fixed", table={"low": -1})


def test_register_rejects_duplicates_and_adds_new_names():
    with pytest.raises(PredictorError, match="twice"):
        register("quantile")(type("Dup", (), {}))

    @register("test-constant")
    class Constant:
        def predict(self, query):
            return Forecast(7 * FLOOR_BYTES, 1.0, "constant")
    try:
        assert fc("test-constant").forecast("anything").peak_bytes == 7 * FLOOR_BYTES
    finally:
        del PREDICTORS["test-constant"]


def test_cold_start_uses_class_priors():
    f = fc()
    assert f.forecast("git status").peak_bytes == 256 * MiB           # low
    assert f.forecast("python x.py").peak_bytes == 1024 * MiB         # medium
    assert f.forecast("pytest -x").peak_bytes == BUDGET               # high = unlimited = budget
    assert f.forecast("pytest -x").source == "prior:high"
    assert f.forecast("pytest -x").confidence == 0.0
    # a policy class and explicit priors override the signature's default class
    g = fc(priors={"batch": 2 << 30})
    assert g.forecast("pytest", tool_class="batch").peak_bytes == 2 << 30


def test_repeated_signature_converges_to_its_own_peaks():
    f = fc()
    learn(f, "pytest tests/a.py", [300 * MiB] * 12)
    got = f.forecast("pytest tests/a.py", agent="a")
    assert 300 * MiB <= got.peak_bytes <= 1.6 * 300 * MiB
    assert got.source.startswith("quantile:agent-full")
    assert got.confidence > 0.5


def test_one_observation_leans_on_coarser_levels():
    # one cheap `pip install -e .` (already installed) must not make the next one look cheap
    f = fc()
    learn(f, "pip install numpy", [400 * MiB] * 6, agent="other")
    learn(f, "pip install -e .", [1 * MiB])
    once = f.forecast("pip install -e .", agent="a").peak_bytes
    learn(f, "pip install -e .", [1 * MiB] * 20)
    often = f.forecast("pip install -e .", agent="a").peak_bytes
    assert once > 300 * MiB
    assert often == FLOOR_BYTES


def test_recent_peaks_weigh_more():
    old_big, new_big, recent = fc(), fc(), fc()
    learn(old_big, "pytest", [800 * MiB] * 8 + [1 * MiB] * 40)     # oldest first
    learn(new_big, "pytest", [1 * MiB] * 40 + [800 * MiB] * 8)
    assert old_big.forecast("pytest", agent="a").peak_bytes < 100 * MiB   # the spike aged out
    assert new_big.forecast("pytest", agent="a").peak_bytes >= 800 * MiB
    # 8 big runs among the last 32: a big run is still likely (about 1 in 8 by recency)
    learn(recent, "pytest", [800 * MiB] * 8 + [1 * MiB] * 24)
    assert recent.forecast("pytest", agent="a").peak_bytes >= 800 * MiB


def test_agents_own_history_comes_first():
    f = fc()
    learn(f, "pytest", [900 * MiB] * 10, agent="big-repo")
    learn(f, "pytest", [40 * MiB] * 10, agent="small-repo")
    assert f.forecast("pytest", agent="big-repo").peak_bytes > 5 * f.forecast("pytest", agent="small-repo").peak_bytes


def test_floor_and_budget_bound_every_forecast():
    f = fc()
    learn(f, "git status", [1000] * 10)
    assert f.forecast("git status", agent="a").peak_bytes == FLOOR_BYTES
    learn(f, "make", [100 << 30] * 10)
    assert f.forecast("make", agent="a").peak_bytes == BUDGET


def test_last_and_fixed_baselines():
    f = fc("last")
    learn(f, "pytest", [100 * MiB, 50 * MiB])
    assert f.forecast("pytest").peak_bytes == 50 * MiB
    assert fc("fixed").forecast("git status").peak_bytes == 256 * MiB
    assert fc("fixed").forecast("pytest").peak_bytes == BUDGET


def test_forecaster_without_history_answers_from_priors():
    class Broken:
        def recent(self, *a, **k):
            raise HistoryError("disk gone")

        def add(self, rec):
            raise HistoryError("disk gone")
    f = fc(store=Broken())
    got = f.forecast("python x.py")
    assert got.peak_bytes == 1024 * MiB and got.source.endswith("no-history")
    with pytest.raises(HistoryError):
        f.observe(ToolCallRecord.from_signature(signature("ls"), ts=0, peak_bytes=1))
    assert Forecaster(None, host_budget=BUDGET).forecast("ls").peak_bytes == 256 * MiB


def test_headroom_multiplies_and_is_validated():
    f = fc(headroom=2.0)
    assert f.forecast("git status").peak_bytes == 512 * MiB
    with pytest.raises(PredictorError):
        fc(headroom=0.5)


def test_reforecast_growth_and_time_to_limit():
    f = fc()
    initial = Forecast(200 * MiB, 0.8, "test")
    # growing 50 MiB/s from 100 MiB: 5 samples over 4 s
    samples = [(t, 100 * MiB + t * 50 * MiB) for t in range(5)]
    live = f.reforecast(initial, samples, limit_bytes=500 * MiB)
    assert live.growth_bytes_per_s == pytest.approx(50 * MiB)
    assert live.seconds_to_limit == pytest.approx((500 - 300) / 50)
    assert live.peak_bytes >= 300 * MiB + 10 * 50 * MiB     # current + horizon of growth
    # flat: no growth, no deadline, the start forecast stands
    flat = f.reforecast(initial, [(t, 120 * MiB) for t in range(5)], limit_bytes=500 * MiB)
    assert flat.growth_bytes_per_s == 0.0 and flat.seconds_to_limit is None
    assert flat.peak_bytes == 200 * MiB
    # past the limit: zero seconds left; outgrown forecast: less confidence
    over = f.reforecast(initial, [(0, 100 * MiB), (1, 600 * MiB)], limit_bytes=500 * MiB)
    assert over.seconds_to_limit == 0.0
    assert over.confidence < f.reforecast(initial, samples[:2]).confidence
    # shrinking memory is not projected to grow
    down = f.reforecast(initial, [(t, (400 - 50 * t) * MiB) for t in range(5)], limit_bytes=None)
    assert down.growth_bytes_per_s == 0.0 and down.peak_bytes == 400 * MiB
    assert f.reforecast(initial, []).peak_bytes == 200 * MiB
