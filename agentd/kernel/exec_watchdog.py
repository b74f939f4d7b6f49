"""The exec watchdog: resumes tasks the lifecycle program stopped at exec when the daemon
does not (it was stopped, hung or killed right after the stop).

Why a separate process: the heartbeat check in the BPF program only prevents new stops
once the daemon stalls; a task stopped a moment before still needs someone to send it
SIGCONT, and nothing inside a SIGSTOPped or wedged daemon runs (no thread, no timer).
In BPF, bpf_send_signal() signals only the current task; a bpf_timer callback calling
the bpf_send_signal_task() kfunc could signal another one, but that kfunc exists only
from 6.13 (the host's 6.18 has it), and the verifier refuses timers in the classic
tracepoint programs the loader falls back to. A small user-space process works on every
kernel the program loads on. The daemon starts it (its own session, so a terminal's
job-control stop of the daemon does not stop it) with the `held`, `heartbeat` and
`stats` map descriptors and a pidfd of the daemon. It wakes a few times per bound,
resumes every `held` task stopped longer than the bound (detection.stop_timeout_s, read
from `heartbeat` at each round so a reload applies), and when the daemon exits (even
kill -9) it resumes everything still held and exits too.

A pid is signalled through a pidfd opened after checking the task's start time against
the one the program recorded, so a reused pid is never signalled.
"""

import argparse
import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time

from ..errors import ProcessGone
from . import bpf_types as T
from . import libbpf
from .pidfd import starttime

DEFAULT_MAX_AGE_NS = 1_000_000_000     # a daemon that set no bound still gets its tasks back
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Maps:
    """The three maps, addressed by descriptor (this process has no bpf_object)."""

    def __init__(self, held_fd, heartbeat_fd, stats_fd):
        self.held_fd, self.heartbeat_fd, self.stats_fd = held_fd, heartbeat_fd, stats_fd
        self.L = libbpf.lib()

    def max_age_ns(self):
        hb = T.agentd_heartbeat()
        if self.L.bpf_map_lookup_elem(self.heartbeat_fd, ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(hb)) < 0:
            return DEFAULT_MAX_AGE_NS
        return hb.max_age_ns or DEFAULT_MAX_AGE_NS

    def held(self):
        out, prev, nxt = {}, None, ctypes.c_uint32()
        while self.L.bpf_map_get_next_key(self.held_fd, ctypes.byref(prev) if prev is not None else None,
                                          ctypes.byref(nxt)) == 0:
            v = T.agentd_held()
            if self.L.bpf_map_lookup_elem(self.held_fd, ctypes.byref(nxt), ctypes.byref(v)) == 0:
                out[nxt.value] = v
            prev, nxt = nxt, ctypes.c_uint32()
        return out

    def forget(self, pid):
        self.L.bpf_map_delete_elem(self.held_fd, ctypes.byref(ctypes.c_uint32(pid)))

    def count_released(self):
        key, v = ctypes.c_uint32(T.AGENTD_STAT_RELEASED), ctypes.c_uint64()
        if self.L.bpf_map_lookup_elem(self.stats_fd, ctypes.byref(key), ctypes.byref(v)) == 0:
            v.value += 1        # this process is the only writer of this slot
            self.L.bpf_map_update_elem(self.stats_fd, ctypes.byref(key), ctypes.byref(v), 0)


def start_ticks(pid):
    """/proc/PID/stat field 22 (starttime, clock ticks since boot); ProcessGone without it."""
    return starttime(pid)


def resume_held(pid, h):
    """SIGCONT `pid` if it is still the task that was stopped. True if signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if start_ticks(pid) != h.start_boottime_ns // _TICK_NS:
            return False                        # the pid was reused
        signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        return True
    except (ProcessGone, ProcessLookupError):
        return False
    finally:
        os.close(pidfd)


def sweep(maps, now_ns, everything=False):
    """One round: resume and forget every task held past the bound (all of them with
    `everything`). Returns the pids resumed."""
    max_age = maps.max_age_ns()
    resumed = []
    for pid, h in maps.held().items():
        if not everything and now_ns - h.stop_ns <= max_age:
            continue
        if resume_held(pid, h):
            resumed.append(pid)
            maps.count_released()
        maps.forget(pid)
    return resumed


def run(maps, daemon_pidfd):
    while True:
        period = min(0.25, max(0.05, maps.max_age_ns() / 4e9))
        try:
            gone = bool(select.select([daemon_pidfd], [], [], period)[0])
        except InterruptedError:
            gone = False
        resumed = sweep(maps, time.monotonic_ns(), everything=gone)
        if resumed:
            print(f"agentd exec-watchdog: the daemon did not resume {len(resumed)} task(s) stopped at exec "
                  f"in time; resumed them: {resumed[:10]}", file=sys.stderr, flush=True)
        if gone:
            return


def spawn(fds, daemon_pid=None):
    """Start the watchdog for the daemon (default: the calling process); `fds` is
    Lifecycle.watchdog_fds(). Returns the Popen."""
    me = os.pidfd_open(daemon_pid or os.getpid())
    try:
        args = [sys.executable, "-m", __name__, "--daemon-pidfd", str(me)]
        for name, fd in fds.items():
            args += [f"--{name}", str(fd)]
        # The same agentd package as the daemon's, wherever the daemon was started from.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        return subprocess.Popen(args, pass_fds=[me, *fds.values()], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        os.close(me)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="agentd-exec-watchdog")
    for name in ("held", "heartbeat", "stats", "daemon-pidfd"):
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # a terminal's ^C is for the daemon
    try:
        run(Maps(a.held, a.heartbeat, a.stats), a.daemon_pidfd)
    except OSError as err:
        if err.errno != errno.EBADF:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
