"""/proc reads and signals that stand in for the BPF programs when BPF is unavailable,
and that the automatic tool-call detection needs in every mode (SIGCONT, descendants).

`proc` is a parameter so tests can point it at a fake tree.
"""

import os
import signal
from dataclasses import dataclass

from ..errors import KernelError, ProcessGone

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    starttime: int      # clock ticks since boot: with pid, identifies a process
    argv: tuple
    rss_bytes: int


class ProcFS:
    def __init__(self, proc="/proc"):
        self.proc = proc

    def _read(self, pid, name, mode="r"):
        try:
            with open(f"{self.proc}/{pid}/{name}", mode) as f:
                return f.read()
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"reading {self.proc}/{pid}/{name}: {err.strerror}") from err

    def info(self, pid):
        stat = self._read(pid, "stat")
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = stat[stat.rindex(")") + 2:].split()
        raw = self._read(pid, "cmdline", "rb")
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        statm = self._read(pid, "statm").split()
        return ProcInfo(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]), state=rest[0],
                        starttime=int(rest[19]), argv=argv, rss_bytes=int(statm[1]) * PAGE_SIZE)

    def rss_bytes(self, pid):
        """Resident set (file + anon + shmem), the quantity the BPF program sums."""
        return int(self._read(pid, "statm").split()[1]) * PAGE_SIZE

    def children(self, pid):
        """Direct children of every thread of `pid` (needs CONFIG_PROC_CHILDREN)."""
        out = []
        try:
            tids = os.listdir(f"{self.proc}/{pid}/task")
        except FileNotFoundError as err:
            raise ProcessGone(f"process {pid} is gone") from err
        for tid in tids:
            try:
                with open(f"{self.proc}/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
        return out

    def descendants(self, pid):
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                kids = self.children(p)
            except ProcessGone:
                continue
            out += kids
            todo += kids
        return out


def resume(pid):
    """SIGCONT a task agentd stopped at exec. False if it is already gone."""
    try:
        os.kill(pid, signal.SIGCONT)
        return True
    except ProcessLookupError:
        return False
