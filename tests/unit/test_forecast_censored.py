"""Censored peaks: which finished calls only show a lower bound of their need, how the
history store keeps the flag (and migrates a version-1 file), and how each predictor reads
a censored peak: never as less than its value, and above the same history read as complete."""

import sqlite3

import pytest

from agentd.forecast import Forecaster, HistoryStore, ToolCallRecord, censored, signature
from agentd.forecast.history import SCHEMA_VERSION
from agentd.forecast.predictors import CENSORED_STEP, make_predictor

MiB = 1 << 20
BUDGET = 64 << 30
# Peaks above the floor are forecast from the calls that got that far, times this.
HEAVY_MARGIN = make_predictor("quantile").heavy_margin


@pytest.mark.parametrize("outcome,actions,events,cut", [
    ("ok", [], {}, False),
    ("failed", [], {"high": 40}, False),          # met the forecast's memory.high only
    ("ok", ["freeze", "thaw"], {}, False),        # frozen, then ran to its own end
    ("killed", ["throttle", "freeze", "kill"], {}, True),
    ("oom_killed", [], {"oom_kill": 1}, True),
    ("failed", [], {"oom_kill": 1}, True),
    ("ok", ["throttle", "restore"], {}, True),    # held below what it used for a while
    ("ok", [], {"max": 3}, True),                 # reclaimed at its hard limit
    ("signaled", [], {}, True),
])
def test_which_calls_are_censored(outcome, actions, events, cut):
    assert censored(outcome, actions, events) is cut


def rec(cmd, peak, cut=False, agent="a", tool_class=None, **kw):
    return ToolCallRecord.from_signature(signature(cmd), ts=0, peak_bytes=peak, agent=agent, argv=cmd.split(),
                                         tool_class=tool_class, censored=cut, **kw)


def test_store_keeps_the_flag_and_its_cache_agrees():
    st = HistoryStore()
    key = signature("pytest -x").full
    st.add(rec("pytest -x", 100))
    assert st.recent("full", key, 5) == [(100, False)]             # asked: now cached
    st.add(rec("pytest -x", 300, cut=True))
    assert st.recent("full", key, 5) == [(300, True), (100, False)]
    assert st.recent_peaks("full", key, 5) == [300, 100]
    assert [r.censored for r in st.records()] == [True, False]
    st._peaks.clear()                                              # the same answer from SQL
    assert st.recent("full", key, 5) == [(300, True), (100, False)]


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tool_calls (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, agent TEXT NOT NULL, agent_class TEXT NOT NULL,
    tool_class TEXT NOT NULL, sig_full TEXT NOT NULL, sig_coarse TEXT NOT NULL, sig_program TEXT NOT NULL,
    argv TEXT NOT NULL, peak_bytes INTEGER NOT NULL, duration_s REAL NOT NULL, cpu_s REAL NOT NULL,
    exit_status INTEGER, action TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_version_1_history_is_migrated_and_its_cut_calls_marked(tmp_path):
    path = str(tmp_path / "history.sqlite")
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    for i, action in enumerate(["", "ok", "throttle,restore", "throttle,freeze,kill", "oom_killed", "signaled",
                                "freeze,thaw", "failed"]):
        db.execute("INSERT INTO tool_calls (ts, agent, agent_class, tool_class, sig_full, sig_coarse, sig_program,"
                   " argv, peak_bytes, duration_s, cpu_s, exit_status, action) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (i, "a", "normal", "batch", "make", "make", "make", '["make"]', 1000 + i, 1.0, 0.5, 0, action))
    db.commit()
    db.close()
    st = HistoryStore(path)
    assert st.recent("full", "make", 10) == [(1007, False), (1006, False), (1005, True), (1004, True),
                                             (1003, True), (1002, True), (1001, False), (1000, False)]
    st.add(rec("make", 5, cut=True))
    st.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.execute("SELECT COUNT(*) FROM tool_calls WHERE censored=1").fetchone()[0] == 5
    db.close()
    HistoryStore(path).close()                                     # opening again changes nothing


def forecaster(predictor, history, prior=64 * MiB, **args):
    st = HistoryStore()
    for r in history:
        st.add(r)
    return Forecaster(st, predictor, priors={"medium": prior}, host_budget=BUDGET, floor_bytes=MiB,
                      predictor_args=args or None)


def peak(f, cmd="python job.py"):
    return f.forecast(cmd, tool_class="medium", agent="a").peak_bytes


@pytest.mark.parametrize("predictor", ["quantile", "max", "last"])
def test_a_cut_off_peak_with_nothing_above_counts_as_an_inflated_lower_bound(predictor):
    hist = [rec("python job.py", 1024 * MiB, cut=True, tool_class="medium") for _ in range(10)]
    complete = [rec("python job.py", 1024 * MiB, tool_class="medium") for _ in range(10)]
    cut, whole = peak(forecaster(predictor, hist)), peak(forecaster(predictor, complete))
    assert cut == pytest.approx(whole * CENSORED_STEP, rel=0.01)
    assert cut > 1024 * MiB


def test_quantile_spreads_a_cut_off_peak_over_the_calls_known_to_get_further():
    # The command needed 3 GiB once, long ago, and ~400 MiB since; the last run was killed
    # at 600 MiB by the ladder: it is read as a run like the big one, not as a 600 MiB run.
    base = [rec("python job.py", 3 << 30, tool_class="medium")] + \
           [rec("python job.py", 400 * MiB, tool_class="medium") for _ in range(20)]
    cut = base + [rec("python job.py", 600 * MiB, cut=True, tool_class="medium")]
    read_whole = base + [rec("python job.py", 600 * MiB, tool_class="medium")]
    assert peak(forecaster("quantile", read_whole)) == int(600 * MiB * HEAVY_MARGIN)     # the bias
    assert peak(forecaster("quantile", cut)) == int((3 << 30) * HEAVY_MARGIN)


def test_quantile_does_not_spread_a_cut_off_peak_over_the_class_prior():
    # An unlimited class prior is not evidence: two throttles of a well-known command move its
    # forecast to the inflated bound, not to the whole host.
    hist = [rec("python job.py", 400 * MiB, tool_class="medium") for _ in range(20)] + \
           [rec("python job.py", 500 * MiB, cut=True, tool_class="medium") for _ in range(2)]
    assert peak(forecaster("quantile", hist, prior=None)) == int(500 * MiB * HEAVY_MARGIN * CENSORED_STEP)


@pytest.mark.parametrize("seed", range(20))
def test_a_censored_peak_never_forecasts_below_the_same_peak_read_as_complete(seed):
    import random
    rnd = random.Random(seed)
    hist = [(rnd.choice([64, 200, 400, 1500, 4000]) * MiB, rnd.random() < 0.3) for _ in range(rnd.randint(1, 30))]
    as_cut = [rec("python job.py", p, cut=c, tool_class="medium") for p, c in hist]
    as_whole = [rec("python job.py", p, tool_class="medium") for p, _ in hist]
    for predictor in ("quantile", "max", "last"):
        assert peak(forecaster(predictor, as_cut)) >= peak(forecaster(predictor, as_whole)), (predictor, hist)
