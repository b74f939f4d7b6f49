"""The small state file under /var/lib/agentd that survives daemon restarts.

cgroupfs is the source of truth for what exists; this file only adds what cgroupfs
cannot hold (agent class, argv of running tool calls, sequence numbers), so the
daemon can re-adopt everything after kill -9.

Layout: `state.json` (a snapshot) plus `state.journal` (one JSON line per change since
the snapshot). A change costs one small O_APPEND write instead of rewriting the whole
file, which matters on the per-tool-call path; `compact()` folds the journal into a new
snapshot at start and every COMPACT_EVERY changes. A torn last line (crash mid-write)
is ignored.
"""

import json
import logging
import os

log = logging.getLogger("agentd.state")

STATE_VERSION = 1
COMPACT_EVERY = 2000


class StateStore:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "state.json") if state_dir else None
        self.journal = os.path.join(state_dir, "state.journal") if state_dir else None
        self._changes = 0
        self._fd = None
        self._warned = False
        if self.path:
            os.makedirs(state_dir, exist_ok=True)

    def load(self):
        empty = {"agents": {}, "tools": {}}
        if not self.path:
            return empty
        data = empty
        try:
            with open(self.path) as f:
                snap = json.load(f)
            if snap.get("version") != STATE_VERSION:
                log.warning("state file %s has version %r, ignoring it", self.path, snap.get("version"))
            else:
                data = {"agents": snap.get("agents", {}), "tools": snap.get("tools", {})}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            log.warning("state file %s unreadable (%s): re-adopting from cgroupfs alone", self.path, err)
        try:
            with open(self.journal) as f:
                for line in f:
                    try:
                        kind, key, value = json.loads(line)
                    except ValueError:
                        continue          # a torn write from a crash
                    table = data["agents" if kind == "agent" else "tools"]
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("state journal %s unreadable: %s", self.journal, err)
        return data

    def record(self, kind, key, value):
        """Journal one change: kind "agent" or "tool"; value None deletes."""
        if not self.journal:
            return
        line = (json.dumps([kind, key, value], separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.write(self._fd, line)
            self._changes += 1
        except OSError as err:
            # A full disk must not stop agents: the cgroup tree still says what runs.
            if not self._warned:
                log.warning("cannot write state journal %s: %s", self.journal, err)
                self._warned = True

    def needs_compaction(self):
        return self._changes >= COMPACT_EVERY

    def compact(self, agents, tools):
        """Write a fresh snapshot and empty the journal."""
        if not self.path:
            return
        data = {"version": STATE_VERSION, "agents": agents, "tools": tools}
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, self.path)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            with open(self.journal, "w"):
                pass
            self._changes = 0
        except OSError as err:
            if not self._warned:
                log.warning("cannot write state file %s: %s", self.path, err)
                self._warned = True
