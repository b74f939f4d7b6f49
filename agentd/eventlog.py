"""The event log: one JSON object per line, appended, for people and for `agentd events`."""

import json
import os
import threading
import time


# The log stays open between events (an open and a close per event cost more than the
# write, several times over on a network or 9p file system). A log rotated away (renamed
# or removed, logrotate without copytruncate) is noticed within this many seconds and a
# new file opened at the path.
REOPEN_CHECK_S = 1.0


class EventLog:
    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._listeners = []
        self._fd = None
        self._ino = None
        self._checked = 0.0
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
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
        rec = {"ts": round(time.time(), 3), "event": kind, **fields}
        line = json.dumps(rec, separators=(",", ":"), default=str)
        if self.path:
            with self._lock:
                # O_APPEND writes of one line are atomic enough for readers tailing the file.
                os.write(self._current_fd(), (line + "\n").encode())
        for fn in list(self._listeners):
            try:
                fn(rec)
            except Exception:
                pass
        return rec


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
