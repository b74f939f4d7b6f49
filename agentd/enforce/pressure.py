"""Pressure sources for the ladder: PSI triggers (event-driven), else a poll of the files.

`PressureWatch` watches the agentd root's and each agent's `memory.pressure`. It prefers
kernel triggers (one epoll fd on the event loop, see kernel/psi.py); the first refusal
switches every watched file to polling the `total=` counter each tick, with one warning.
A fake source (a file in the same format, named by AGENTD_PRESSURE_FILE) replaces the
root's file for tests that must drive the ladder without real memory pressure.
"""

import logging
import time

from ..errors import AgentdError, CgroupGone
from ..kernel import psi

log = logging.getLogger("agentd.enforce")

ROOT = ""                         # the key of the agentd root's file


class PressureWatch:
    def __init__(self, threshold_us, window_us, on_pressure, fake_file=None):
        """`on_pressure(key, now, how)` is called for every event; key "" = the root."""
        self.threshold_us, self.window_us = int(threshold_us), int(window_us)
        self.on_pressure = on_pressure
        self.fake_file = fake_file
        self.paths = {}           # key -> path of the pressure file
        self.triggers = None      # psi.TriggerSet while triggers work
        self.poller = psi.PressurePoller(threshold_us, window_us)
        self.mode = "poll" if fake_file else "psi-trigger"
        self.loop = None
        self.events_total = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self, loop):
        self.loop = loop
        if self.mode == "psi-trigger":
            self.triggers = psi.TriggerSet()
            loop.add_reader(self.triggers.fileno(), self._on_ready)
            for key, path in list(self.paths.items()):
                self._register(key, path)

    def stop(self):
        if self.triggers is not None:
            if self.loop is not None:
                try:
                    self.loop.remove_reader(self.triggers.fileno())
                except Exception:
                    pass
            self.triggers.close()
            self.triggers = None

    def watch(self, key, path):
        if self.fake_file and key == ROOT:
            path = self.fake_file
        self.paths[key] = path
        if self.triggers is not None:
            self._register(key, path)

    def unwatch(self, key):
        self.paths.pop(key, None)
        self.poller.forget(key)
        if self.triggers is not None:
            self.triggers.remove(key)

    # --- triggers ----------------------------------------------------------------
    def _register(self, key, path):
        if self.fake_file and key == ROOT:
            return                # the fake file is polled, never a trigger
        try:
            self.triggers.add(key, path, self.threshold_us, self.window_us)
        except CgroupGone:
            self.paths.pop(key, None)
        except AgentdError as err:
            log.warning("PSI triggers unavailable (%s): polling memory.pressure every tick instead; "
                        "reactions come up to one tick later", err)
            self.stop()
            self.mode = "poll"

    def _on_ready(self):
        if self.triggers is None:
            return
        now = time.monotonic()
        fired, gone = self.triggers.ready(0)
        for key in gone:
            self.paths.pop(key, None)
        for key in fired:
            self.events_total += 1
            self.on_pressure(key, now, "psi-trigger")

    # --- polling -----------------------------------------------------------------
    def poll(self, now=None):
        """Read the files that are polled (all in poll mode, else the fake one)."""
        now = time.monotonic() if now is None else now
        for key, path in list(self.paths.items()):
            if self.triggers is not None and not (self.fake_file and key == ROOT):
                continue
            try:
                total = psi.total_us(path)
            except CgroupGone:
                self.unwatch(key)
                continue
            except AgentdError as err:
                log.debug("cannot read %s: %s", path, err)
                continue
            if self.poller.check(key, total, now):
                self.events_total += 1
                self.on_pressure(key, now, "poll")
