"""Events the BPF programs (or their user-space stand-ins) report, as model objects.

Records arrive as the C structs of bpf/agentd.h; decode_* turns them into frozen
dataclasses so nothing above this module sees ctypes.
"""

import ctypes
import enum
import os
import signal
from dataclasses import dataclass

from ..kernel import bpf_types as T


class ProcKind(enum.IntEnum):
    FORK = T.AGENTD_EV_FORK
    EXEC = T.AGENTD_EV_EXEC
    EXIT = T.AGENTD_EV_EXIT


@dataclass(frozen=True)
class ProcEvent:
    """fork: pid is the new process, ppid its parent. exec: filename + argv head.
    exit: status is the wait(2) status."""
    kind: ProcKind
    pid: int
    ppid: int
    cgroup_id: int
    watched_id: int
    ts_ns: int
    flags: int = 0
    sid: int = 0
    pgid: int = 0
    status: int = 0
    comm: str = ""
    filename: str = ""
    argv: tuple = ()
    argv_truncated: bool = False

    @property
    def stopped(self):
        """The program stopped this task at exec; someone must SIGCONT it."""
        return bool(self.flags & T.AGENTD_PF_STOPPED)

    @property
    def in_main(self):
        return bool(self.flags & T.AGENTD_PF_MAIN)

    @property
    def stop_skipped(self):
        """The program would have stopped this task but the daemon's heartbeat was stale:
        it ran on unplaced, and may have forked already."""
        return bool(self.flags & T.AGENTD_PF_STOP_SKIPPED)

    @property
    def parent_in_main(self):
        return bool(self.flags & T.AGENTD_PF_PARENT_MAIN)

    @property
    def container(self):
        """An exec in a container's cgroup started from outside it (an exec session, or the
        container's init): agentd/monitor/containers.py places it, not the detector."""
        return bool(self.flags & T.AGENTD_PF_CONTAINER)

    @property
    def leads_session(self):
        return self.sid == self.pid and self.pid != 0

    @property
    def exit_code(self):
        """The exit code, or None if a signal ended the process."""
        return os.waitstatus_to_exitcode(self.status) if not (self.status & 0x7F) else None

    @property
    def signal(self):
        sig = self.status & 0x7F
        return signal.Signals(sig) if sig else None


class MemReason(enum.IntFlag):
    THRESHOLD = T.AGENTD_MEM_OVER_THRESHOLD
    RATE = T.AGENTD_MEM_OVER_RATE


@dataclass(frozen=True)
class MemEvent:
    """A watched cgroup crossed its usage threshold and/or its growth-rate limit."""
    cgroup_id: int
    reason: MemReason
    rss_bytes: int
    threshold_bytes: int
    rate_bytes_per_s: int
    growth_bytes: int
    window_ns: int
    pid: int
    ts_ns: int


def _str(raw):
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def decode_proc(data):
    ev = T.agentd_proc_event.from_buffer_copy(data[:ctypes.sizeof(T.agentd_proc_event)])
    argv = ()
    truncated = False
    if ev.type == T.AGENTD_EV_EXEC:
        raw = bytes(data[T.agentd_proc_event.argv.offset:T.agentd_proc_event.argv.offset + ev.argv_len])
        truncated = ev.argv_len >= T.AGENTD_ARGV_LEN - 1 and not raw.endswith(b"\0")
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
    return ProcEvent(
        kind=ProcKind(ev.type), pid=ev.pid, ppid=ev.ppid, cgroup_id=ev.cgroup_id,
        watched_id=ev.watched_id, ts_ns=ev.ts_ns, flags=ev.flags, sid=ev.sid, pgid=ev.pgid,
        status=ev.exit_code, comm=_str(ev.comm), filename=_str(ev.filename), argv=argv,
        argv_truncated=truncated)


def decode_mem(data):
    ev = T.agentd_mem_event.from_buffer_copy(data[:ctypes.sizeof(T.agentd_mem_event)])
    return MemEvent(
        cgroup_id=ev.cgroup_id, reason=MemReason(ev.reason), rss_bytes=ev.rss_bytes,
        threshold_bytes=ev.threshold_bytes, rate_bytes_per_s=ev.rate_bytes_per_s,
        growth_bytes=ev.growth_bytes, window_ns=ev.window_ns, pid=ev.pid, ts_ns=ev.ts_ns)
