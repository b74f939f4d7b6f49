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

`TriggerSet` multiplexes many triggers on one epoll whose own fd an asyncio loop watches
with `add_reader`, so a hundred agents cost one reader. Where triggers cannot be
registered, `PressurePoller` offers the same "pressure exceeded" signal from the `total=`
counter, read periodically (one warning says so).
"""

import errno
import os
import select

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
    """Many triggers behind one epoll fd.

    `fileno()` is what an event loop watches for readability; `ready()` (non-blocking)
    returns the keys of triggers that fired, and the keys of triggers whose cgroup was
    removed (EPOLLERR: the kernel tears a trigger down with its cgroup) in `gone`.
    """

    def __init__(self):
        self._ep = select.epoll()
        self._by_fd = {}          # fd -> (key, Trigger)
        self._by_key = {}

    def fileno(self):
        return self._ep.fileno()

    def add(self, key, path, threshold_us, window_us, kind="some"):
        """Register a trigger on `path` under `key`; FeatureMissing/CgroupGone on refusal."""
        self.remove(key)
        t = Trigger(path, threshold_us, window_us, kind)
        self._ep.register(t.fd, select.EPOLLPRI | select.EPOLLERR)
        self._by_fd[t.fd] = (key, t)
        self._by_key[key] = t
        return t

    def remove(self, key):
        t = self._by_key.pop(key, None)
        if t is None:
            return
        self._by_fd.pop(t.fd, None)
        try:
            self._ep.unregister(t.fd)
        except (OSError, ValueError):
            pass
        t.close()

    def keys(self):
        return list(self._by_key)

    def ready(self, timeout=0):
        """(fired keys, gone keys) of the events pending now (or within `timeout` s)."""
        fired, gone = [], []
        for fd, mask in self._ep.poll(timeout):
            entry = self._by_fd.get(fd)
            if entry is None:
                continue
            key = entry[0]
            if mask & select.EPOLLERR:
                gone.append(key)
            elif mask & select.EPOLLPRI:
                fired.append(key)
        for key in gone:
            self.remove(key)
        return fired, gone

    def close(self):
        for key in list(self._by_key):
            self.remove(key)
        self._ep.close()


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
