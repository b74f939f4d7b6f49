"""Pressure sources for the ladder: PSI triggers (event-driven), else a poll of the files.

`PressureWatch` watches the agentd root's and each agent's `memory.pressure`. It prefers
kernel triggers (one epoll, waited on by one thread that hands events to the event loop;
not an `add_reader` on the loop, which loses trigger events: see kernel/psi.py); the first
refusal switches every watched file to polling the `total=` counter each tick, with one
warning. So does a trigger thread that died (an exception in it): each poll (the
enforcer's tick) checks that it still runs; a dead one costs one error, and the mode
(`modes()`, `agentd status`) says so.
A fake source (a file in the same format, named by AGENTD_PRESSURE_FILE) replaces the
root's file for tests that must drive the ladder without real memory pressure.
"""

import logging
import time

from ..errors import AgentdError, CgroupGone
from ..kernel import psi

log = logging.getLogger("agentd.enforce")

ROOT = ""                         # the key of the agentd root's file
POLL_AFTER_THREAD_DIED = "poll (trigger thread died)"


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
        self.handoff_s = None     # trigger thread -> loop latency of the latest batch

    # --- lifecycle -------------------------------------------------------------
    def start(self, loop):
        self.loop = loop
        if self.mode == "psi-trigger":
            self.triggers = psi.TriggerSet()
            for key, path in list(self.paths.items()):
                if self.triggers is None:
                    break         # refused: polling took over
                self._register(key, path)
            if self.triggers is not None:
                self.triggers.start(self._from_thread)

    def stop(self):
        if self.triggers is not None:
            triggers, self.triggers = self.triggers, None
            triggers.close()

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

    def _from_thread(self, fired, gone, seen):
        """Runs on the trigger thread: hand the batch to the event loop."""
        try:
            self.loop.call_soon_threadsafe(self._on_events, fired, gone, seen)
        except RuntimeError:
            pass                  # the loop is closing: nothing left to react

    def _on_events(self, fired, gone, seen):
        """On the loop: `seen` is when the trigger thread woke (monotonic), so reactions
        are timed from the kernel's notification, not from when the loop got to them."""
        if self.triggers is None:
            return
        self.handoff_s = time.monotonic() - seen
        live = set(self.triggers.keys())
        for key in gone:
            if key not in live:   # else watched again since, by a new trigger
                self.paths.pop(key, None)
        for key in fired:
            if key not in self.paths:
                continue          # unwatched meanwhile
            self.events_total += 1
            self.on_pressure(key, seen, "psi-trigger")

    def _check_thread(self):
        """A trigger thread that died delivers nothing more: poll every file instead."""
        err = self.triggers.died()
        if err is None:
            return
        log.error("PSI trigger thread died (%s: %s): polling memory.pressure every tick instead; "
                  "reactions come up to one tick later", type(err).__name__, err,
                  exc_info=(type(err), err, err.__traceback__))
        self.stop()
        self.mode = POLL_AFTER_THREAD_DIED

    # --- polling -----------------------------------------------------------------
    def poll(self, now=None):
        """Read the files that are polled (all in poll mode, else the fake one)."""
        now = time.monotonic() if now is None else now
        if self.triggers is not None:
            self._check_thread()
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
