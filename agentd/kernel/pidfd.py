"""Process identity held as a pidfd: the adapter for pidfd_open(2), SO_PEERPIDFD and
poll(2) on a pidfd.

A pid names a process only while that process lives: once it has exited and been reaped
the kernel hands the number to the next fork. Anything agentd checks about a pid (a
caller's child, a peer's cgroup) and later acts on (a move into a tool call's cgroup, an
oom_score_adj write) would otherwise act on whatever process holds the number by then.

A `Proc` is taken once, when the check is made: a pidfd (which always refers to that one
process) plus the start time from /proc/<pid>/stat, read and then checked against the
pidfd when it is taken. `verify()` says whether the pid still names that process: the
pidfd has not become readable (it does once the process has exited, zombie included, so
the pid cannot have been reused). The safe pattern is read-then-verify: read
/proc/<pid>/..., then verify; if the process was alive after the read, the read was of
that process. Before acting on a pid, verify immediately before the write.
"""

import errno
import os
import select
import socket

from ..errors import KernelError, ProcessGone
from .files import read_text

# <asm-generic/socket.h>; Linux 6.5+. Python 3.11's socket module lacks the name. The
# architectures with their own socket.h (alpha, mips, parisc, sparc) use other numbers.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)


def starttime(pid, proc="/proc"):
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
    With the pid it names one process; ProcessGone once there is none."""
    try:
        raw = read_text(f"{proc}/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError) as err:
        raise ProcessGone(f"process {pid} is gone") from err
    except OSError as err:
        raise KernelError(f"reading {proc}/{pid}/stat: {err.strerror}") from err
    # comm may contain spaces and parentheses: split after the last ')'.
    return int(raw[raw.rindex(")") + 2:].split()[19])


def _pid_of(fd, proc):
    """The pid a pidfd refers to (fdinfo "Pid:"; -1 once the process is gone)."""
    try:
        for line in read_text(f"{proc}/self/fdinfo/{fd}").splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
    except OSError as err:
        raise KernelError(f"reading fdinfo of pidfd {fd}: {err.strerror}") from err
    raise KernelError(f"fd {fd} is not a pidfd")


class Proc:
    """One process, held by a pidfd and its start time (see the module's docstring)."""

    __slots__ = ("pid", "fd", "starttime", "proc", "source")

    def __init__(self, pid, fd, starttime, proc="/proc", source="pidfd_open"):
        self.pid, self.fd, self.starttime, self.proc, self.source = pid, fd, starttime, proc, source

    @classmethod
    def open(cls, pid, proc="/proc"):
        """Hold `pid` now. Raises ProcessGone when it has already exited."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"pidfd_open({pid}): {err.strerror}") from err
        return cls._finish(pid, fd, proc, "pidfd_open")

    @classmethod
    def of_peer(cls, sock, pid=None, proc="/proc"):
        """The process at the other end of a connected unix socket.

        SO_PEERPIDFD (Linux 6.5+) gives a pidfd for the very process that connected, even
        if its pid was reused since. Older kernels: pidfd_open of the SO_PEERCRED pid,
        which is right unless that process exited and its pid was reused between
        connect() and now (a window of microseconds, not the lifetime of the connection)."""
        try:
            fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as err:
            if err.errno == errno.ESRCH:
                # The kernel knows the option and says the peer has been reaped: its
                # SO_PEERCRED pid may already be someone else's. No fallback here.
                raise ProcessGone("the connecting process has exited") from err
            fd = None                 # ENOPROTOOPT: a kernel before 6.5
        if fd is not None and fd >= 0:
            peer = _pid_of(fd, proc)
            if peer <= 0:
                os.close(fd)
                raise ProcessGone("the connecting process has exited")
            return cls._finish(peer, fd, proc, "SO_PEERPIDFD")
        if pid is None:
            raise KernelError("no peer pid: SO_PEERPIDFD unavailable and no SO_PEERCRED pid given")
        return cls.open(pid, proc)

    @classmethod
    def _finish(cls, pid, fd, proc, source):
        try:
            start = starttime(pid, proc)
            p = cls(pid, fd, start, proc, source)
            if not p.alive():             # read-then-verify: the stat was of this process
                raise ProcessGone(f"process {pid} is gone")
            return p
        except BaseException:
            os.close(fd)
            raise

    def alive(self):
        """False once the process has exited (its pidfd polls readable)."""
        if self.fd is None:
            return False
        # poll, not select: a busy daemon's fds go past select's FD_SETSIZE (1024).
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        try:
            return not p.poll(0)
        except OSError:
            return False

    def verify(self):
        """Raise ProcessGone unless `pid` still names this process. One poll: the pidfd
        refers to this process alone (its start time was checked when it was taken), and
        while it has not polled readable the process has not exited, zombie included, so
        its pid cannot have been handed to another; a second read of the start time could
        add nothing (it is paid on every request, several times per tool call)."""
        if not self.alive():
            raise ProcessGone(f"process {self.pid} has exited")

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Proc(pid={self.pid}, starttime={self.starttime}, {self.source})"
