"""Standalone mode: `agentd run` hosts the controller itself when no daemon runs.

An App in a background thread of `agentd run`, for that one agent tree, under
<mount>/agentd.standalone/<pid>; removed when the run ends. Its tool-call history persists
(standalone_state_dir) so forecasts learn from one run to the next on a laptop.
"""

import asyncio
import os
import threading

from .daemon import App
from .errors import AgentdError


def standalone_state_dir(state_dir, euid=None, environ=None):
    """Where a standalone `agentd run` keeps its tool-call history: root uses the state dir
    (the policy's daemon.state_dir, the one the system daemon uses), anyone else the XDG
    state dir ($XDG_STATE_HOME/agentd, else ~/.local/state/agentd)."""
    euid = os.geteuid() if euid is None else euid
    env = os.environ if environ is None else environ
    if euid == 0:
        return state_dir
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "agentd")



class Standalone:
    """An App in a background thread of `agentd run`, for one agent tree, when no daemon runs."""

    def __init__(self, cfg):
        self.app = App(cfg)
        self.thread = None
        self.error = None

    def start(self):
        self.app.build()

        def target():
            try:
                asyncio.run(self.app.serve())
            except BaseException as err:     # surfaced to the caller, who reports it
                self.error = err
                self.app.ready.set()

        self.thread = threading.Thread(target=target, name="agentd-standalone", daemon=True)
        self.thread.start()
        self.app.ready.wait(30)
        if self.error:
            raise self.error
        return self.app.socket_path

    def stop(self):
        self.app.stop()
        if self.thread:
            self.thread.join(10)
        try:
            self.app.fs.remove_tree(self.app.root)
            # The shared parent of all standalone roots goes too once the last one ends.
            parent = self.app.root.rpartition("/")[0]
            if parent and not self.app.fs.children(parent):
                self.app.fs.rmdir(parent)
        except AgentdError:
            pass
