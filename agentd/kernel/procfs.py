"""/proc adapter: the per-process facts agentd needs, with `proc` as a parameter so
tests can point it at a fake tree. Used by the daemon (authorisation, placement checks)
and by the user-space stand-ins for the BPF programs (automatic detection, memory)."""

import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass

from ..errors import FeatureMissing, KernelError, ProcessGone
from .files import read_bytes, read_text

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# capability(7) numbers agentd asks about, named once.
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24      # may lower oom_score_adj, and pins oom_score_adj_min (agentd/oom.py)
CAP_BPF = 39


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


def meminfo(keys, proc="/proc"):
    """{key: bytes} of the named /proc/meminfo lines present (their "kB" converted)."""
    want = set(keys)
    out = {}
    try:
        for line in read_text(f"{proc}/meminfo").splitlines():
            k, _, rest = line.partition(":")
            if k in want:
                v = rest.split()
                out[k] = int(v[0]) * (1024 if len(v) > 1 and v[1] == "kB" else 1)
                if len(out) == len(want):
                    break
    except OSError as err:
        raise KernelError(f"reading {proc}/meminfo: {err.strerror}") from err
    except (ValueError, IndexError) as err:
        raise KernelError(f"{proc}/meminfo: unexpected format ({err})") from err
    return out


def host_meminfo(proc="/proc"):
    """(MemTotal, MemAvailable) in bytes, None for either when unknown: the host's RAM and
    what it can still give. Read on every admission decision and enforcer tick, so two
    lines of /proc/meminfo rather than a full parse of it."""
    try:
        m = meminfo(("MemTotal", "MemAvailable"), proc)
    except KernelError:
        return None, None
    return m.get("MemTotal"), m.get("MemAvailable")


def own_cgroup(pid="self", proc="/proc"):
    """The v2 cgroup path (relative to the v2 mount, leading '/') of a process."""
    return ProcFS(proc).cgroup(pid)


def cpu_times(proc="/proc"):
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat's "cpu" line: the
    difference of two readings over a span is how busy the CPUs were in it. Idle and iowait
    are not busy; steal is (the vCPU was wanted but the host ran something else)."""
    try:
        with open(f"{proc}/stat") as f:
            line = f.readline()
    except OSError as err:
        raise KernelError(f"reading {proc}/stat: {err.strerror}") from err
    w = line.split()
    if not w or w[0] != "cpu":
        raise KernelError(f"{proc}/stat: no cpu line first")
    try:
        ticks = [int(x) for x in w[1:]]
    except ValueError as err:
        raise KernelError(f"{proc}/stat: unexpected format ({err})") from err
    total = sum(ticks[:8])                  # guest and guest_nice are inside user and nice
    idle = sum(ticks[3:5])                  # idle + iowait
    return total - idle, total


# A process's arguments can be megabytes (up to ARG_MAX and more), set by whoever exec'd
# it: an agent's child. Only the head is read; analysis looks at a few KB of it anyway
# (agentd/shellwords.py), and the cut last argument is kept as it was read.
CMDLINE_MAX_BYTES = 64 * 1024


class ProcFS:
    def __init__(self, proc="/proc"):
        self.proc = proc

    def _read(self, pid, name, mode="r", limit=-1):
        try:
            path = f"{self.proc}/{pid}/{name}"
            return read_bytes(path, limit) if "b" in mode else read_text(path, limit)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"reading /proc/{pid}/{name}: {err.strerror}") from err

    def cgroup(self, pid):
        """cgroup v2 path of `pid` ("self" for this process) relative to the v2 mount,
        with a leading '/'. FeatureMissing when the process has no v2 membership."""
        for line in self._read(pid, "cgroup").splitlines():
            if line.startswith("0::"):
                return line[3:]
        raise FeatureMissing(f"process {pid} has no cgroup v2 membership")

    def stat(self, pid):
        """(ppid, pgid, sid, starttime) from /proc/<pid>/stat."""
        raw = self._read(pid, "stat")
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = raw[raw.rindex(")") + 2:].split()
        return int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19])

    def ppid(self, pid):
        return self.stat(pid)[0]

    def cmdline(self, pid):
        raw = self._read(pid, "cmdline", "rb", CMDLINE_MAX_BYTES)
        if not raw:
            return []
        parts = raw.split(b"\0")
        if raw.endswith(b"\0"):
            parts = parts[:-1]        # else the read was cut: keep the head of the last one
        return [a.decode(errors="replace") for a in parts]

    def comm(self, pid):
        return self._read(pid, "comm").strip()

    def exe(self, pid):
        """Path of the executable `pid` runs (the /proc/<pid>/exe link; a replaced or
        removed binary reads with " (deleted)", dropped here)."""
        try:
            path = os.readlink(f"{self.proc}/{pid}/exe")
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"reading /proc/{pid}/exe: {err.strerror}") from err
        return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path

    def groups(self, pid):
        """Real uid, primary gid and supplementary group ids of `pid` (from status)."""
        uid = gid = None
        groups = []
        for line in self._read(pid, "status").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
            elif line.startswith("Groups:"):
                groups = [int(g) for g in line.split()[1:]]
        return uid, gid, groups

    def has_capability(self, pid, *bits):
        """Does `pid` ("self" for this process) hold any of the capabilities `bits` in its
        effective set (CapEff in status)?"""
        for line in self._read(pid, "status").splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return any(caps & (1 << b) for b in bits)
        return False

    def oom_score_adj(self, pid):
        return int(self._read(pid, "oom_score_adj"))

    def set_oom_score_adj(self, pid, value):
        """Write /proc/<pid>/oom_score_adj (-1000..1000). Lowering needs CAP_SYS_RESOURCE.
        A writer that holds it also sets the process's floor (oom_score_adj_min) to `value`
        (fs/proc/base.c __set_oom_adj): the process, and what it forks later, can no
        longer go below it without the capability. Without it the floor stays where it was."""
        try:
            fd = os.open(f"{self.proc}/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(int(value)).encode())
            finally:
                os.close(fd)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"writing /proc/{pid}/oom_score_adj: {err.strerror}") from err

    # --- what a process really runs (argv[0] is whatever its parent chose) ----------
    def _exe_err(self, pid, err):
        if isinstance(err, (FileNotFoundError, ProcessLookupError)):
            return ProcessGone(f"process {pid} is gone")
        return KernelError(f"reading /proc/{pid}/exe: {err.strerror}")

    def exe_stat(self, pid):
        """os.stat_result of that file (dev, inode, size, times): its identity."""
        try:
            return os.stat(f"{self.proc}/{pid}/exe")
        except OSError as err:
            raise self._exe_err(pid, err) from err

    def exe_digest(self, pid):
        """sha256 of that file's content, read through /proc/<pid>/exe (the file loaded,
        even if its path was replaced since)."""
        h = hashlib.sha256()
        try:
            with open(f"{self.proc}/{pid}/exe", "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as err:
            raise self._exe_err(pid, err) from err
        return h.hexdigest()

    def running_argv(self, pid):
        """What `pid` runs, from the kernel rather than from its argv[0]: the real
        executable's path followed by cmdline[1:]; for a `#!` script (which the kernel
        starts as INTERPRETER [ARG] SCRIPT ARGS...) the script and its arguments."""
        exe = self.exe(pid)
        cmdline = self.cmdline(pid)
        for i in (1, 2):
            if i < len(cmdline) and cmdline[i].startswith("/") and self._is_script(pid, cmdline[i]):
                return cmdline[i:]
        return [exe] + cmdline[1:]

    def _is_script(self, pid, path):
        # Through the process's own root (a container's files); non-blocking and regular
        # files only: the path is the process's choice, and a FIFO must not stall us.
        try:
            fd = os.open(f"{self.proc}/{pid}/root{path}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return False
        try:
            return stat_mod.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 2, 0) == b"#!"
        except OSError:
            return False
        finally:
            os.close(fd)

    def hold(self, pid):
        """`pid` held by a pidfd (kernel.pidfd.Proc): later checks and writes can tell
        whether the pid still names this process."""
        from .pidfd import Proc
        return Proc.open(pid, self.proc)

    def exists(self, pid):
        return os.path.exists(f"{self.proc}/{pid}")

    def info(self, pid):
        stat = self._read(pid, "stat")
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = stat[stat.rindex(")") + 2:].split()
        raw = self._read(pid, "cmdline", "rb", CMDLINE_MAX_BYTES)
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        statm = self._read(pid, "statm").split()
        return ProcInfo(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]), state=rest[0],
                        starttime=int(rest[19]), argv=argv, rss_bytes=int(statm[1]) * PAGE_SIZE)

    def ns_pid(self, pid):
        """`pid` as its own (innermost) pid namespace numbers it: the last NSpid of
        /proc/<pid>/status (1: the init of a container's pid namespace)."""
        for line in self._read(pid, "status").splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        return pid                    # kernels before 4.1 have no NSpid: no namespace seen

    def rss_bytes(self, pid):
        """Resident set (file + anon + shmem), the quantity the BPF program sums."""
        return int(self._read(pid, "statm").split()[1]) * PAGE_SIZE

    def rss_total(self, pids):
        """Summed resident set of `pids`; a process gone or unreadable meanwhile counts 0."""
        total = 0
        for pid in pids:
            try:
                total += self.rss_bytes(pid)
            except (KernelError, ValueError, IndexError):
                pass
        return total

    def comms(self):
        """The comm (name, cut to 15 characters) of every process on the host."""
        out = []
        for entry in os.listdir(self.proc):
            if entry.isdigit():
                try:
                    out.append(self.comm(entry))
                except KernelError:
                    continue                  # exited meanwhile
        return out

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
