"""PSI (pressure stall information) adapter: read `*.pressure` files, register triggers.

The kernel's trigger interface makes pressure reactions event-driven: write
`"some <threshold_us> <window_us>"` to an open `memory.pressure` (or /proc/pressure/memory)
and the file descriptor becomes ready for POLLPRI whenever tasks stalled for more than
`threshold_us` within any `window_us`; at most one event per window. The kernel requires:
- the window between 0.5 s and 10 s; a writer without CAP_SYS_RESOURCE only multiples of
  2 s (EINVAL otherwise: the "unprivileged trigger" rule of Linux 6.5+);
- the trigger string NUL-terminated on some paths (/proc/pressure/* on 7.x); every path
  accepts the trailing NUL, so it is always written;
- the fd open for as long as the trigger should live (closing removes it).

`TriggerSet` multiplexes many triggers on one epoll, waited on by one thread of its own
(`start`), so a hundred agents cost one thread. Its epoll fd must never be nested in
another epoll (such as an asyncio loop's `add_reader`): polling a trigger fd *consumes*
its event (the kernel's psi_trigger_poll clears the pending flag), and an outer epoll
polls the inner one's items to decide whether the inner fd is ready. The outer check
then eats the event and the inner epoll_wait reports nothing. Measured in the kernel
tier (7.3): with the set's fd on the daemon's loop, 6 of 6 trigger events woke the loop
and none reached the daemon; an event got through only when two triggers fired in the
same wake-up (the outer check stops at the first ready item), which is why the ladder
sometimes reacted after one window and sometimes after 75 s.

Where triggers cannot be registered, `PressurePoller` offers the same "pressure
exceeded" signal from the `total=` counter, read periodically (one warning says so).
"""

import errno
import os
import select
import threading
import time

from ..errors import CgroupGone, FeatureMissing, KernelError

KINDS = ("some", "full")


def parse(text):
    """Parse a pressure file: {"some": {"avg10": 0.0, ..., "total": us}, "full": {...}}.

    "full" is absent from cpu.pressure on kernels < 5.13; missing lines are absent keys.
    """
    out = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in KINDS:
            continue
        vals = {}
        for item in rest.split():
            k, _, v = item.partition("=")
            try:
                vals[k] = int(v) if k == "total" else float(v)
            except ValueError:
                continue
        out[kind] = vals
    return out


def read(path):
    """Parsed contents of a pressure file; CgroupGone when the cgroup went away."""
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENODEV):
            raise CgroupGone(f"{path}: {err.strerror}") from err
        raise KernelError(f"reading {path}: {err.strerror}") from err


def total_us(path, kind="some"):
    """The cumulative stall time (µs) of `kind` in a pressure file."""
    return read(path).get(kind, {}).get("total", 0)


def trigger_spec(threshold_us, window_us, kind="some"):
    """The bytes written to register a trigger (NUL-terminated, see the module doc)."""
    if kind not in KINDS:
        raise ValueError(f"PSI trigger kind must be some or full, not {kind!r}")
    return f"{kind} {int(threshold_us)} {int(window_us)}".encode() + b"\0"


class Trigger:
    """One registered PSI trigger: an open fd that polls POLLPRI on each pressure event."""

    def __init__(self, path, threshold_us, window_us, kind="some"):
        self.path = path
        self.threshold_us, self.window_us, self.kind = int(threshold_us), int(window_us), kind
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENODEV):
                raise CgroupGone(f"{path}: {err.strerror}") from err
            raise FeatureMissing(f"cannot open {path} for a PSI trigger: {err.strerror}") from err
        try:
            os.write(self.fd, trigger_spec(threshold_us, window_us, kind))
        except OSError as err:
            os.close(self.fd)
            self.fd = -1
            hint = ""
            if err.errno == errno.EINVAL and window_us % 2_000_000:
                hint = (" (without CAP_SYS_RESOURCE the kernel accepts only windows that are "
                        "multiples of 2 s: set pressure.psi_window_us to 2000000)")
            elif err.errno == errno.EBUSY:
                hint = " (a trigger is already registered on this fd)"
            raise FeatureMissing(f"PSI trigger {kind} {threshold_us} {window_us} refused by "
                                 f"{path}: {err.strerror}{hint}") from err

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self):
        return f"Trigger({self.path!r}, {self.kind} {self.threshold_us}/{self.window_us})"


class TriggerSet:
    """Many triggers behind one epoll, with exactly one waiter.

    Either call `wait()`/`ready()` yourself, or `start(deliver)` a thread that waits and
    calls `deliver(fired_keys, gone_keys, monotonic_time)` from that thread for every
    batch. Gone keys are triggers whose cgroup was removed (EPOLLERR: the kernel tears a
    trigger down with its cgroup); they are removed from the set before delivery.
    add()/remove() may be called from any thread while the waiter runs.
    """

    def __init__(self):
        self._ep = select.epoll()
        self._lock = threading.Lock()
        self._by_fd = {}          # fd -> (key, Trigger)
        self._by_key = {}
        # A pipe in the epoll wakes the waiter for stop(); it carries no data that matters.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._thread = None
        self._stopping = False
        self._error = None        # what ended the waiter thread on its own

    def add(self, key, path, threshold_us, window_us, kind="some"):
        """Register a trigger on `path` under `key`; FeatureMissing/CgroupGone on refusal."""
        self.remove(key)
        t = Trigger(path, threshold_us, window_us, kind)
        with self._lock:
            self._by_fd[t.fd] = (key, t)
            self._by_key[key] = t
            self._ep.register(t.fd, select.EPOLLPRI | select.EPOLLERR)
        return t

    def remove(self, key):
        with self._lock:
            t = self._by_key.get(key)
            if t is not None:
                self._drop(key, t)

    def _drop(self, key, t):
        """Unregister and close `t` (held lock)."""
        if self._by_key.get(key) is t:
            del self._by_key[key]
        self._by_fd.pop(t.fd, None)
        try:
            self._ep.unregister(t.fd)
        except (OSError, ValueError):
            pass
        t.close()

    def keys(self):
        with self._lock:
            return list(self._by_key)

    def wait(self, timeout=None):
        """(fired keys, gone keys): blocks up to `timeout` s (None: until an event or stop)."""
        fired, gone = [], []
        try:
            events = self._ep.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return fired, gone
        with self._lock:
            for fd, mask in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 64)
                    except BlockingIOError:
                        pass
                    continue
                entry = self._by_fd.get(fd)
                if entry is None:
                    continue      # removed meanwhile
                if mask & select.EPOLLERR:
                    # Drop this very trigger, under the lock that found it: removing by key
                    # afterwards could close a new trigger registered under the same key
                    # (an agent re-created with its name) in between.
                    gone.append(entry[0])
                    self._drop(*entry)
                elif mask & select.EPOLLPRI:
                    fired.append(entry[0])
        return fired, gone

    def ready(self, timeout=0):
        """Events pending now (or within `timeout` s); for callers without a thread."""
        return self.wait(timeout)

    # --- the waiter thread ---------------------------------------------------------------
    def start(self, deliver):
        """Wait for events in a daemon thread and hand each batch to `deliver`."""
        if self._thread is not None:
            return
        self._stopping = False
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(deliver,), name="agentd-psi", daemon=True)
        self._thread.start()

    def died(self):
        """The exception that ended the waiter thread, when it ended without stop();
        None while it runs (or before start, or after stop). Nothing else would notice:
        a dead waiter just delivers no more events, as if there were no pressure."""
        th = self._thread
        if th is None or th.is_alive() or self._stopping:
            return None
        return self._error or RuntimeError("the PSI trigger thread ended")

    def _run(self, deliver):
        try:
            self._loop(deliver)
        except Exception as err:          # kept for died(): the owner logs it and carries on
            self._error = err

    def _loop(self, deliver):
        while not self._stopping:
            try:
                fired, gone = self.wait(None)
            except (OSError, ValueError):
                if self._stopping:
                    return
                raise
            if (fired or gone) and not self._stopping:
                deliver(fired, gone, time.monotonic())

    def stop(self):
        """Stop the waiter thread (if any) and wait for it to end."""
        th, self._thread = self._thread, None
        if th is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        th.join(5.0)

    def close(self):
        self.stop()
        for key in self.keys():
            self.remove(key)
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class PressurePoller:
    """The trigger semantics computed from `total=` samples, for hosts where triggers fail.

    `check(key, total_us, now)` records one sample and answers whether the stall time within
    the last `window_s` reached `threshold_us`; like the kernel, it reports at most once
    per window per key.
    """

    def __init__(self, threshold_us, window_us):
        self.threshold_us = int(threshold_us)
        self.window_s = window_us / 1e6
        self._samples = {}        # key -> [(t, total_us)]
        self._last_fire = {}

    def check(self, key, total, now):
        s = self._samples.setdefault(key, [])
        s.append((now, total))
        while len(s) > 1 and s[1][0] <= now - self.window_s:
            s.pop(0)
        base = s[0][1]
        if total - base < self.threshold_us:
            return False
        if now - self._last_fire.get(key, float("-inf")) < self.window_s:
            return False
        self._last_fire[key] = now
        return True

    def forget(self, key):
        self._samples.pop(key, None)
        self._last_fire.pop(key, None)
