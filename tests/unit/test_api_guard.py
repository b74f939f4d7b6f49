"""Bounds the API server keeps: connection counts, rate-limited logging, the event log's
per-agent rate and its failures (no daemon needed)."""

import logging

from agentd import eventlog
from agentd.api import guard


def test_connection_counts_per_uid_and_root():
    c = guard.ConnectionCounts()
    for _ in range(4):
        assert c.over(1000, per_uid=4) is None
        c.add(1000)
    assert c.over(1000, per_uid=4) == "per_uid"
    assert c.over(1001, per_uid=4) is None
    for _ in range(10):
        c.add(0)
    assert c.over(0, per_uid=4) is None          # root: only the total bounds it
    c.remove(1000)
    assert c.over(1000, per_uid=4) is None
    assert c.total == 13


def test_connection_budget_keeps_a_reserve_and_counts_each_connections_fds():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        # A socket and a peer pidfd per connection: (1024 - 256) / 2.
        assert guard.connection_budget() == (1024 - guard.FD_RESERVE) // guard.FDS_PER_CONNECTION == 384
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_rate_limited_log_says_what_it_held_back(caplog):
    rl = guard.RateLimitedLog(logging.getLogger("t"), burst=3, interval_s=3600)
    with caplog.at_level(logging.INFO, logger="t"):
        sent = [rl("k", logging.INFO, "line %d", i) for i in range(100)]
    assert sent.count(True) == 3 and len(caplog.records) == 3
    rl._keys["k"][0] -= 7200                     # the window has passed
    with caplog.at_level(logging.INFO, logger="t"):
        rl("k", logging.INFO, "again")
    assert "97 similar messages suppressed" in caplog.text


def test_event_log_never_raises_and_counts(tmp_path, caplog):
    log = eventlog.EventLog(str(tmp_path / "d" / "ev.jsonl"))
    log.emit("x", agent="a")
    log.close()
    log.path = str(tmp_path / "missing" / "ev.jsonl")   # cannot be opened: ENOENT
    with caplog.at_level(logging.WARNING, logger="agentd.events"):
        for _ in range(5):
            log.emit("y", agent="a")
    assert log.write_errors == 5
    assert caplog.text.count("cannot write the event log") == 1
    assert log.metric_stats()["event_log_write_errors_total"] == 5


def test_event_log_rate_per_agent(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog, "AGENT_BURST_BYTES", 10_000)
    monkeypatch.setattr(eventlog, "AGENT_BYTES_PER_S", 1)
    log = eventlog.EventLog(str(tmp_path / "ev.jsonl"))
    for _ in range(200):
        log.emit("tool_start", agent="noisy", argv=["x" * 200])
    log.emit("tool_start", agent="quiet")
    assert 0 < log.dropped < 200
    lines = (tmp_path / "ev.jsonl").read_text().splitlines()
    assert len(lines) == 200 - log.dropped + 1
    assert '"agent":"quiet"' in lines[-1]


def test_a_request_that_takes_long_gets_keepalives_until_its_reply(monkeypatch):
    """A client tells a working daemon from a hung one by the keepalive notices it sends
    while a request runs; none follow the reply, and a quick request gets none."""
    import asyncio
    import json

    from agentd.api import server

    monkeypatch.setattr(server, "KEEPALIVE_S", 0.05)
    sent = []

    class Writer:
        def is_closing(self):
            return False

        def write(self, data):
            sent.append(json.loads(data))

    class App:
        slow = True

        async def op_hello(self, conn, req):
            if self.slow:
                await asyncio.sleep(0.28)
            return {"version": "x"}

    app = App()
    srv = server.Server(app, "/nonexistent")
    conn = server.Connection(1, 0, 0, Writer())

    async def run():
        await srv._one(conn, b'{"v":1,"op":"hello"}\n')
        await asyncio.sleep(0.2)                   # no keepalive after the reply
        n = len(sent)
        app.slow = False
        await srv._one(conn, b'{"v":1,"op":"hello"}\n')
        await asyncio.sleep(0.2)
        return n

    n = asyncio.run(run())
    kinds = [m.get("notice", "ok" if m.get("ok") else m.get("error", {}).get("message")) for m in sent]
    assert kinds[:n - 1] == ["keepalive"] * (n - 1) and 4 <= n - 1 <= 6, kinds
    assert kinds[n - 1:] == ["ok", "ok"], kinds
