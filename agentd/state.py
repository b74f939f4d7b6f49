"""The small state file under /var/lib/agentd that survives daemon restarts.

cgroupfs is the source of truth for what exists; this file only adds what cgroupfs
cannot hold (agent class, argv of running tool calls, sequence numbers), so the
daemon can re-adopt everything after kill -9.
"""

import json
import logging
import os

log = logging.getLogger("agentd.state")

STATE_VERSION = 1


class StateStore:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "state.json") if state_dir else None
        if self.path:
            os.makedirs(state_dir, exist_ok=True)

    def load(self):
        if not self.path:
            return {"agents": {}, "tools": {}}
        try:
            with open(self.path) as f:
                data = json.load(f)
            if data.get("version") != STATE_VERSION:
                log.warning("state file %s has version %r, ignoring it", self.path, data.get("version"))
                return {"agents": {}, "tools": {}}
            return {"agents": data.get("agents", {}), "tools": data.get("tools", {})}
        except FileNotFoundError:
            return {"agents": {}, "tools": {}}
        except (OSError, ValueError) as err:
            log.warning("state file %s unreadable (%s): re-adopting from cgroupfs alone", self.path, err)
            return {"agents": {}, "tools": {}}

    def save(self, agents, tools):
        if not self.path:
            return
        data = {"version": STATE_VERSION, "agents": agents, "tools": tools}
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as err:
            # A full disk must not stop agents: the cgroup tree still says what runs.
            log.warning("cannot write state file %s: %s", self.path, err)
