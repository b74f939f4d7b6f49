"""The history store: every finished tool call, in SQLite, for the forecaster to learn from.

One table of tool calls keyed by the three signature levels (and tool class), indexed so the
forecaster's question — "the last N peaks of this signature (for this agent)" — is one index
range scan. Each peak carries a `censored` flag: a call agentd or the kernel killed or held
down showed only a lower bound of its need, which the predictors treat as such. WAL mode, so the daemon's writes never block a reader (`agentd report`) and a
crash loses at most the last transaction. `:memory:` serves tests and the benchmark.

A store opened with `batch=True` (the daemon's) keeps added calls in memory and writes them
in one transaction at `flush()` (the daemon's tick), when BATCH_MAX are waiting, before any
query of its own and at close: a commit writes every index page it touched, eight pages
for one call, so one per call was most of what recording a call cost. Forecasts see a call
at once (the in-memory answers below); a crash loses the calls of the last tick.

Failure is contained: any SQLite error becomes `HistoryError` (disk full and read-only
database get their own messages), and the daemon runs on without history (the forecaster
falls back to class priors). A database written by a newer agentd is refused rather than
half-read.
"""

import json
import sqlite3

from ..errors import AgentdError
from .model import ToolCallRecord

# 2: tool_calls.censored (the peak is a lower bound); a version-1 file is migrated at open.
SCHEMA_VERSION = 2
DEFAULT_PATH = "/var/lib/agentd/history.sqlite"
# Signature levels a query may name, mapped to their column (the only strings that reach SQL).
LEVELS = {"full": "sig_full", "coarse": "sig_coarse", "program": "sig_program",
          "tool_class": "tool_class"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tool_calls (
    id          INTEGER PRIMARY KEY,
    ts          REAL NOT NULL,
    agent       TEXT NOT NULL,
    agent_class TEXT NOT NULL,
    tool_class  TEXT NOT NULL,
    sig_full    TEXT NOT NULL,
    sig_coarse  TEXT NOT NULL,
    sig_program TEXT NOT NULL,
    argv        TEXT NOT NULL,       -- JSON list
    peak_bytes  INTEGER NOT NULL,
    duration_s  REAL NOT NULL,
    cpu_s       REAL NOT NULL,
    exit_status INTEGER,
    action      TEXT NOT NULL,
    censored    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tc_full    ON tool_calls (sig_full, id);
CREATE INDEX IF NOT EXISTS tc_coarse  ON tool_calls (sig_coarse, id);
CREATE INDEX IF NOT EXISTS tc_program ON tool_calls (sig_program, id);
CREATE INDEX IF NOT EXISTS tc_class   ON tool_calls (tool_class, id);
CREATE INDEX IF NOT EXISTS tc_agent   ON tool_calls (agent, sig_full, id);
CREATE INDEX IF NOT EXISTS tc_agent_c ON tool_calls (agent, sig_coarse, id);
CREATE INDEX IF NOT EXISTS tc_agent_p ON tool_calls (agent, sig_program, id);
"""


class HistoryError(AgentdError):
    """The history database cannot be used; agentd goes on forecasting from priors."""


class HistoryFull(HistoryError):
    """The disk holding the history database is full."""


class HistoryReadOnly(HistoryError):
    """The history database (or its directory) is not writable."""


def _convert(err, path, doing):
    msg = str(err).lower()
    if "full" in msg:           # SQLITE_FULL: "database or disk is full"
        return HistoryFull(f"history database {path}: disk full while {doing}; "
                           "free space or point agentd at another history path")
    if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
        return HistoryReadOnly(f"history database {path}: not writable while {doing} ({err}); "
                               "check the directory exists and root can write it")
    return HistoryError(f"history database {path}: {doing} failed: {err}")


# Answers of recent_peaks() kept in memory (each a handful of integers), at most this many.
PEAKS_CACHED = 4096
# A batched store writes at the latest when this many calls wait.
BATCH_MAX = 64
_INSERT = ("INSERT INTO tool_calls (ts, agent, agent_class, tool_class, sig_full, sig_coarse,"
           " sig_program, argv, peak_bytes, duration_s, cpu_s, exit_status, action, censored)"
           " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


class HistoryStore:
    """SQLite-backed tool-call history. Not thread-safe: one owner (the daemon's loop).

    The forecaster asks up to seven recent_peaks() questions per tool call, and a call's
    own signatures are asked again at its next start: the answers are kept in memory and
    brought up to date by add() (the newest peak goes in front), so a repeated question
    costs no query. That holds while this store is the database's only writer, as the
    daemon's is; readers (`agentd report`) are unaffected."""

    def __init__(self, path=":memory:", max_bytes=None, batch=False):
        """`max_bytes` caps the database file: past it `add` raises HistoryFull, as a full
        disk would (call `prune` to make room); with `batch`, `flush` (or the `add` that
        fills a batch) raises it."""
        self.path = str(path)
        self._peaks = {}          # (column, key, agent or None) -> (n asked, peaks newest first)
        self.batch = batch
        self._pending = []        # rows added and not yet written (batch)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            if max_bytes is not None:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // page)}")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise HistoryError(f"history database {self.path} has schema {row[0]}, newer than "
                                   f"this agentd's {SCHEMA_VERSION}; upgrade agentd or move it away")
            elif int(row[0]) < 2:
                self._migrate_v1()
        except sqlite3.Error as err:
            raise _convert(err, self.path, "opening") from err

    def _migrate_v1(self):
        """Version 1 had no `censored` column. Its calls' `action` says what agentd did to
        them (the ladder's actions, else the outcome): a call throttled or killed (by agentd
        or the kernel's OOM killer) or ended by a signal did not show its whole peak."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("ALTER TABLE tool_calls ADD COLUMN censored INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE tool_calls SET censored=1 WHERE action LIKE '%kill%' "
                             "OR action LIKE '%throttle%' OR action='signaled'")
            self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def close(self):
        """Close the database, writing what waits first (HistoryError if that fails: the
        database is closed all the same)."""
        try:
            self.flush()
        finally:
            self._db.close()

    def add(self, rec: ToolCallRecord):
        """Store one finished tool call (with `batch`: at the next flush)."""
        row = (rec.ts, rec.agent, rec.agent_class, rec.tool_class, rec.sig_full,
               rec.sig_coarse, rec.sig_program, json.dumps(list(rec.argv)),
               int(rec.peak_bytes), rec.duration_s, rec.cpu_s, rec.exit_status, rec.action,
               int(bool(rec.censored)))
        if self.batch:
            self._pending.append(row)
            if len(self._pending) >= BATCH_MAX:
                self.flush()
        else:
            try:
                self._db.execute(_INSERT, row)
            except sqlite3.Error as err:
                raise _convert(err, self.path, "recording a tool call") from err
        sample = (int(rec.peak_bytes), bool(rec.censored))
        for col in LEVELS.values():
            for agent in (None, rec.agent):
                hit = self._peaks.get((col, getattr(rec, col), agent))
                if hit is not None:
                    hit[1].insert(0, sample)
                    del hit[1][hit[0]:]

    def flush(self):
        """Write the calls a batched store keeps waiting, in one transaction. Rows that
        fail to be written are dropped with the error (HistoryError): a full disk or a
        read-only file would refuse them again."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, rows)
        except sqlite3.Error as err:
            raise _convert(err, self.path, "recording tool calls") from err

    def recent(self, level, key, n, agent=None):
        """(peak bytes, censored) of the last `n` calls whose `level` is `key`, newest first.
        A censored peak is a lower bound: the call was cut short or held down."""
        col = LEVELS[level]
        n = int(n)
        hit = self._peaks.get((col, key, agent))
        if hit is not None and hit[0] >= n:
            return hit[1][:n]
        sql = f"SELECT peak_bytes, censored FROM tool_calls WHERE {col}=?"
        args = [key]
        if agent is not None:
            sql += " AND agent=?"
            args.append(agent)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(n)
        samples = [(r[0], bool(r[1])) for r in self._query(sql, args)]
        if len(self._peaks) >= PEAKS_CACHED:
            self._peaks.clear()
        self._peaks[(col, key, agent)] = (n, list(samples))
        return samples

    def recent_peaks(self, level, key, n, agent=None):
        """Peak bytes of the last `n` calls whose `level` is `key`, newest first (censored
        or not; predictors ask recent() to tell them apart)."""
        return [p for p, _ in self.recent(level, key, n, agent)]

    def count(self, level=None, key=None, agent=None):
        """Number of recorded calls, optionally of one signature level/key and agent."""
        sql, args = "SELECT COUNT(*) FROM tool_calls WHERE 1=1", []
        if level is not None:
            sql += f" AND {LEVELS[level]}=?"
            args.append(key)
        if agent is not None:
            sql += " AND agent=?"
            args.append(agent)
        return self._query(sql, args)[0][0]

    def records(self, limit=100):
        """The last `limit` records, newest first (for reports and tests)."""
        rows = self._query("SELECT ts, agent, agent_class, tool_class, sig_full, sig_coarse,"
                           " sig_program, peak_bytes, duration_s, cpu_s, exit_status, action, argv, censored"
                           " FROM tool_calls ORDER BY id DESC LIMIT ?", [int(limit)])
        return [ToolCallRecord(*r[:12], argv=tuple(json.loads(r[12])), censored=bool(r[13])) for r in rows]

    def prune(self, keep):
        """Drop all but the newest `keep` records, so the file stays bounded."""
        self.flush()
        self._peaks.clear()
        try:
            self._db.execute("DELETE FROM tool_calls WHERE id <= "
                             "(SELECT id FROM tool_calls ORDER BY id DESC LIMIT 1 OFFSET ?)",
                             (int(keep),))
        except sqlite3.Error as err:
            raise _convert(err, self.path, "pruning") from err

    def _query(self, sql, args):
        self.flush()              # a batched store's own queries see every call it was given
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise _convert(err, self.path, "reading") from err
