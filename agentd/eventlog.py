"""The event log: one JSON object per line, appended, for people and for `agentd events`."""

import json
import logging
import os
import threading
import time

log = logging.getLogger("agentd.events")


# The log stays open between events (an open and a close per event cost more than the
# write, several times over on a network or 9p file system). A log rotated away (renamed
# or removed, logrotate without copytruncate) is noticed within this many seconds and a
# new file opened at the path.
REOPEN_CHECK_S = 1.0

# Each agent's events may fill the log at this many bytes per second on average, in bursts
# of up to BURST_BYTES; beyond that its lines are dropped (and counted). One agent
# looping over tool calls must not fill the disk every other agent's record lives on.
# An ordinary agent writes well under 1% of this.
AGENT_BYTES_PER_S = 128 * 1024
AGENT_BURST_BYTES = 4 * 1024 * 1024
# A log that cannot be written (a full disk) is said once, then at most this often.
WARN_EVERY_S = 60.0


class _Bucket:
    """A token bucket of bytes (time passed in, so it is plain arithmetic)."""

    def __init__(self, rate, burst, now):
        self.rate, self.burst = rate, burst
        self.tokens, self.t = float(burst), now

    def take(self, n, now):
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class EventLog:
    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._listeners = []
        self._fd = None
        self._ino = None
        self._checked = 0.0
        self._buckets = {}        # agent -> _Bucket
        self._warned = None       # monotonic time of the last write-error warning
        self.write_errors = 0     # lines lost to a file system that refused them
        self.dropped = 0          # lines held back by the per-agent rate limit
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def _open(self):
        # Events carry every agent's argv: the log is root's alone, like the state
        # (agentd/filemodes.py); one left readable by an older agentd is made so.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, st.st_mode & 0o700)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._checked = time.monotonic()

    def _current_fd(self):
        """The open log (the lock held), opened again when the path no longer names it."""
        if self._fd is not None and time.monotonic() - self._checked >= REOPEN_CHECK_S:
            self._checked = time.monotonic()
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ino
            except FileNotFoundError:
                moved = True
            if moved:
                self._close()
        if self._fd is None:
            self._open()
        return self._fd

    def _close(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self):
        with self._lock:
            self._close()

    def subscribe(self, fn):
        self._listeners.append(fn)

    def emit(self, kind, **fields):
        """Record an event. Never raises: the log is a record of tool calls, and a log that
        cannot be written (a full disk, a removed directory) must not fail the call."""
        rec = {"ts": round(time.time(), 3), "event": kind, **fields}
        line = json.dumps(rec, separators=(",", ":"), default=str)
        if self.path:
            with self._lock:
                self._write(line, fields.get("agent"))
        for fn in list(self._listeners):
            try:
                fn(rec)
            except Exception:
                pass
        return rec

    def _write(self, line, agent):
        data = (line + "\n").encode()
        now = time.monotonic()
        if agent is not None:
            b = self._buckets.get(agent)
            if b is None:
                if len(self._buckets) > 4096:     # agents come and go: forget idle ones
                    self._buckets = {a: x for a, x in self._buckets.items() if x.tokens < x.burst}
                b = self._buckets[agent] = _Bucket(AGENT_BYTES_PER_S, AGENT_BURST_BYTES, now)
            if not b.take(len(data), now):
                self.dropped += 1
                return
        try:
            # O_APPEND writes of one line are atomic enough for readers tailing the file.
            os.write(self._current_fd(), data)
        except OSError as err:
            self.write_errors += 1
            if self._warned is None or now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning("cannot write the event log %s: %s (%d lines lost so far; tool calls go on)",
                            self.path, err.strerror or err, self.write_errors)

    def metric_stats(self):
        return {"event_log_write_errors_total": self.write_errors, "event_log_dropped_total": self.dropped}


def read_events(path, agent=None, since=0.0):
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if agent and rec.get("agent") != agent:
                    continue
                if rec.get("ts", 0) < since:
                    continue
                yield rec
    except FileNotFoundError:
        return
