"""The event log: one JSON object per line, appended, for people and for `agentd events`."""

import json
import os
import threading
import time


class EventLog:
    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._listeners = []
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def subscribe(self, fn):
        self._listeners.append(fn)

    def emit(self, kind, **fields):
        rec = {"ts": round(time.time(), 3), "event": kind, **fields}
        line = json.dumps(rec, separators=(",", ":"), default=str)
        if self.path:
            with self._lock:
                # O_APPEND writes of one line are atomic enough for readers tailing the file.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
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
