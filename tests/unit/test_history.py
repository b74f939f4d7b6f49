"""History store: SQLite round trips, per-level and per-agent queries, bounded size, and
the specific errors the daemon relies on to carry on without history."""

import sqlite3

import pytest

from agentd.forecast import (HistoryError, HistoryFull, HistoryReadOnly, HistoryStore,
                             ToolCallRecord, signature)
from agentd.forecast.history import SCHEMA_VERSION


def rec(cmd, peak, agent="a1", ts=0.0, **kw):
    return ToolCallRecord.from_signature(signature(cmd), ts=ts, peak_bytes=peak, agent=agent,
                                         argv=cmd.split(), **kw)


def test_round_trip_keeps_every_field():
    st = HistoryStore(":memory:")
    r = rec("pytest -x tests/a.py", 123_000_000, ts=5.0, agent_class="normal", duration_s=2.5,
            cpu_s=1.25, exit_status=1, action="throttled")
    st.add(r)
    (back,) = st.records()
    assert back == r
    assert back.argv == ("pytest", "-x", "tests/a.py")


def test_recent_peaks_newest_first_bounded_and_per_level():
    st = HistoryStore()
    for i, cmd in enumerate(["pytest tests/a.py", "pytest tests/b.py", "pytest tests/a.py",
                             "git status"]):
        st.add(rec(cmd, (i + 1) * 1000))
    assert st.recent_peaks("full", "pytest tests/a.py", 10) == [3000, 1000]
    assert st.recent_peaks("coarse", "pytest", 10) == [3000, 2000, 1000]
    assert st.recent_peaks("coarse", "pytest", 2) == [3000, 2000]
    assert st.recent_peaks("program", "git", 10) == [4000]
    assert st.recent_peaks("tool_class", "high", 10) == [3000, 2000, 1000]
    assert st.count() == 4
    assert st.count("coarse", "pytest") == 3


def test_answers_kept_in_memory_follow_every_add_and_prune():
    """recent_peaks() answers are kept and brought up to date by add(): a store asked
    between its adds (forecast, call, record, forecast, ...) answers what SQL answers."""
    import random
    rnd = random.Random(7)
    st, ref = HistoryStore(), HistoryStore()
    cmds = ["pytest tests/a.py", "pytest tests/b.py", "git status", "make -j4"]
    questions = [(lvl, key, n, ag) for lvl, key in (("full", "pytest tests/a.py"), ("coarse", "pytest"),
                                                   ("program", "git"), ("tool_class", "high"))
                 for n in (1, 3, 32) for ag in (None, "a1", "a2")]
    for i in range(80):
        r = rec(rnd.choice(cmds), i * 1000, agent=rnd.choice(["a1", "a2"]))
        st.add(r)
        ref.add(r)
        if i == 50:
            st.prune(10)
            ref.prune(10)
        for lvl, key, n, ag in rnd.sample(questions, 8):
            ref._peaks.clear()                # the reference always asks SQL
            assert st.recent_peaks(lvl, key, n, agent=ag) == ref.recent_peaks(lvl, key, n, agent=ag)
    assert st._peaks                          # the answers were kept, not asked again each time


def test_agent_filter():
    st = HistoryStore()
    st.add(rec("pytest", 1, agent="a"))
    st.add(rec("pytest", 2, agent="b"))
    assert st.recent_peaks("full", "pytest", 10, agent="a") == [1]
    assert st.recent_peaks("full", "pytest", 10) == [2, 1]
    assert st.count(agent="b") == 1


def test_unknown_level_is_refused_before_sql():
    with pytest.raises(KeyError):
        HistoryStore().recent_peaks("argv; DROP TABLE tool_calls", "x", 1)


def test_prune_keeps_newest():
    st = HistoryStore()
    for i in range(10):
        st.add(rec("git status", i))
    st.prune(3)
    assert st.recent_peaks("full", "git status", 100) == [9, 8, 7]


def test_file_store_uses_wal_and_persists(tmp_path):
    path = tmp_path / "history.sqlite"
    st = HistoryStore(path)
    st.add(rec("npm test", 42))
    assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a second connection (a reader such as `agentd report`) sees the committed write
    reader = HistoryStore(path)
    assert reader.recent_peaks("full", "npm test", 5) == [42]
    st.close()
    reader.close()
    again = HistoryStore(path)
    assert again.count() == 1
    again.close()


def test_full_database_raises_history_full(tmp_path):
    st = HistoryStore(tmp_path / "h.sqlite", max_bytes=64 * 1024)
    with pytest.raises(HistoryFull) as exc:
        for i in range(10_000):
            st.add(rec("pip install " + "x" * 200 + str(i), i))
    assert "disk full" in str(exc.value)
    st.prune(10)       # the documented way out
    st.close()


def test_unwritable_location_raises_read_only(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(HistoryReadOnly):
        HistoryStore(blocker / "history.sqlite")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    HistoryStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="newer"):
        HistoryStore(path)


def test_garbage_file_is_a_history_error(tmp_path):
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError):
        HistoryStore(path)


def test_history_error_is_an_agentd_error():
    from agentd.errors import AgentdError
    assert issubclass(HistoryFull, HistoryError) and issubclass(HistoryError, AgentdError)


def test_batched_store_writes_at_flush_and_its_own_reads_see_every_call(tmp_path):
    path = tmp_path / "h.sqlite"
    st = HistoryStore(path, batch=True)
    reader = sqlite3.connect(path)
    st.recent_peaks("full", "make", 5)              # asked once: answered from memory after
    for i in range(3):
        st.add(rec("make", (i + 1) * 1000))
    # Not written yet: another reader sees nothing, the forecaster's answers already do.
    assert reader.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0] == 0
    assert st.recent_peaks("full", "make", 5) == [3000, 2000, 1000]
    st.flush()
    assert reader.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0] == 3
    st.add(rec("git status", 7))
    assert st.count() == 4                           # a query of its own writes first
    st.add(rec("git log", 8))
    st.close()                                       # and so does close
    assert reader.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0] == 5
    reader.close()


def test_batched_store_writes_when_a_batch_is_full(tmp_path):
    from agentd.forecast.history import BATCH_MAX
    path = tmp_path / "h.sqlite"
    st = HistoryStore(path, batch=True)
    reader = sqlite3.connect(path)
    for i in range(BATCH_MAX):
        st.add(rec(f"cmd{i}", i))
    assert reader.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0] == BATCH_MAX
    reader.close()
    st.close()


def test_full_batched_store_raises_history_full_at_flush(tmp_path):
    st = HistoryStore(tmp_path / "h.sqlite", max_bytes=64 * 1024, batch=True)
    with pytest.raises(HistoryFull):
        for i in range(10_000):
            st.add(rec("pip install " + "x" * 200 + str(i), i))
            st.flush()
    st.flush()                                       # the refused rows are dropped, not retried
    st.prune(10)
    st.close()
