"""cgroup v2 filesystem adapter.

Every cgroupfs file name agentd uses is named once here. All paths are relative to a
`root` given by the caller, so tests can point the adapter at a fake tree on disk
(see `fakes.py`) or at the real hierarchy.
"""

import errno
import os
import signal
import time

from ..errors import CgroupGone, KernelError
from .files import read_text
from .procfs import own_cgroup

# File names, named once.
PROCS = "cgroup.procs"
EVENTS = "cgroup.events"
FREEZE = "cgroup.freeze"
KILL = "cgroup.kill"
CONTROLLERS = "cgroup.controllers"
SUBTREE_CONTROL = "cgroup.subtree_control"
STAT = "cgroup.stat"
MEMORY_CURRENT = "memory.current"
MEMORY_PEAK = "memory.peak"
MEMORY_MIN = "memory.min"
MEMORY_LOW = "memory.low"
MEMORY_HIGH = "memory.high"
MEMORY_MAX = "memory.max"
MEMORY_SWAP_MAX = "memory.swap.max"
MEMORY_EVENTS = "memory.events"
MEMORY_STAT = "memory.stat"
MEMORY_PRESSURE = "memory.pressure"
MEMORY_RECLAIM = "memory.reclaim"       # write N: the kernel reclaims N bytes from the cgroup now (5.19+)
CGROUP_MAX_DESCENDANTS = "cgroup.max.descendants"   # core file: mkdir below fails (EAGAIN) past it
MEMORY_OOM_GROUP = "memory.oom.group"     # 1: an OOM kill in the cgroup takes all of it
CPU_PRESSURE = "cpu.pressure"
IO_PRESSURE = "io.pressure"
CPU_WEIGHT = "cpu.weight"
CPU_MAX = "cpu.max"
CPU_STAT = "cpu.stat"
PIDS_MAX = "pids.max"
PIDS_CURRENT = "pids.current"

# What these files hold in a cgroup the kernel has just made (Documentation/admin-guide/
# cgroup-v2.rst): writing one of these values there changes nothing.
FRESH_DEFAULTS = {MEMORY_MIN: "0", MEMORY_LOW: "0", MEMORY_HIGH: "max", MEMORY_MAX: "max",
                  CPU_WEIGHT: "100", PIDS_MAX: "max"}


def controller_of(name):
    """The controller an interface file belongs to ("memory.high" -> "memory")."""
    return name.partition(".")[0]


# Controllers agentd enables down its tree when the kernel offers them.
WANTED_CONTROLLERS = ("cpu", "memory", "pids", "io")

_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH)


def _raise(err, what):
    if err.errno in _GONE:
        raise CgroupGone(f"{what}: {err.strerror}") from err
    raise KernelError(f"{what}: {err.strerror}") from err


def open_dir(path):
    """An O_DIRECTORY fd of the cgroup at `path` (a path under a v2 mount), for the calls
    that take one (attaching BPF programs, clone3 into it). CgroupGone when it is not there."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise CgroupGone(f"{path}: {err.strerror}") from err
        _raise(err, f"opening {path}")


def parse_int(text):
    """An integer file's text; 'max' is None."""
    s = text.strip()
    return None if s == "max" else int(s)


def parse_flat_keyed(text):
    """A flat-keyed file's text ("key value" lines) as {key: int}."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v:
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def flat_key(text, key):
    """One key of a flat-keyed file's text, or None when absent: memory.stat has some
    fifty lines, and the per-decision readers want one of them."""
    prefix = key + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix):])
            except ValueError:
                return None
    return None


def limit_values(limits, cpu_period_us=100_000):
    """The cgroup v2 file contents a tool call's or an agent's limits stand for (`limits`
    has the fields of agentd.policy.match.ToolLimits: bytes, CPUs, counts; None = "max")."""
    def v(n):
        return "max" if n is None else str(n)
    quota = "max" if limits.cpu_max is None else str(max(1000, int(limits.cpu_max * cpu_period_us)))
    return {MEMORY_MIN: v(limits.memory_min), MEMORY_LOW: v(limits.memory_low),
            MEMORY_HIGH: v(limits.memory_high), MEMORY_MAX: v(limits.memory_max),
            CPU_WEIGHT: str(limits.cpu_weight), CPU_MAX: f"{quota} {cpu_period_us}",
            PIDS_MAX: v(limits.pids_max)}


MOUNTS = "/proc/self/mounts"


def cgroup2_mounts(mounts=MOUNTS):
    """{mount point: mount options} of every cgroup v2 mount, in mount order ({} when the
    mount table cannot be read)."""
    found = {}
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "cgroup2":
                    found[parts[1].replace("\\040", " ")] = tuple(parts[3].split(","))
    except OSError:
        return {}
    return found


def find_cgroup2_mount(mounts=MOUNTS):
    """Return the mount point of the cgroup v2 hierarchy, or None.

    Pure v2 hosts mount it at /sys/fs/cgroup; hybrid hosts (v1 controllers plus a
    controller-less v2 tree) at /sys/fs/cgroup/unified. Prefer the one with controllers.
    """
    found = list(cgroup2_mounts(mounts))
    if not found:
        return None
    for path in found:
        try:
            with open(os.path.join(path, CONTROLLERS)) as f:
                if f.read().strip():
                    return path
        except OSError:
            continue
    return found[0]


class PeakFile:
    """A memory.peak descriptor from CgroupFS.peak_from_now."""

    def __init__(self, f, reset):
        self._f, self.reset = f, reset

    def read(self):
        self._f.seek(0)
        return parse_int(self._f.read())

    def close(self):
        self._f.close()


class CgroupFS:
    """Read and write a cgroup v2 hierarchy mounted at `mount`.

    Cgroups are named by their path relative to the mount ("agentd/agents/a1/main").
    """

    def __init__(self, mount):
        self.mount = mount

    def path(self, cg, name=None):
        p = os.path.join(self.mount, cg.strip("/")) if cg.strip("/") else self.mount
        return os.path.join(p, name) if name else p

    # --- tree -------------------------------------------------------------
    def exists(self, cg):
        return os.path.isdir(self.path(cg))

    # The daemon runs with umask 077 (its state is root's alone), which would make every
    # cgroup it creates 0700. cgroup directories stay readable as systemd's are: tools
    # and people outside agentd read memory.current and cgroup.procs there.
    DIR_MODE = 0o755

    def mkdir(self, cg, exist_ok=True):
        try:
            os.mkdir(self.path(cg), self.DIR_MODE)
            os.chmod(self.path(cg), self.DIR_MODE)
            return True
        except FileExistsError:
            if not exist_ok:
                raise KernelError(f"cgroup {cg} already exists") from None
            return False
        except OSError as err:
            _raise(err, f"creating cgroup {cg}")

    def makedirs(self, cg):
        parts = [p for p in cg.strip("/").split("/") if p]
        cur = ""
        for p in parts:
            cur = f"{cur}/{p}" if cur else p
            self.mkdir(cur)

    def rmdir(self, cg):
        """Remove an empty cgroup. Returns False if it was already gone."""
        try:
            os.rmdir(self.path(cg))
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            _raise(err, f"removing cgroup {cg}")

    def children(self, cg):
        try:
            return sorted(e.name for e in os.scandir(self.path(cg)) if e.is_dir(follow_symlinks=False))
        except OSError as err:
            _raise(err, f"listing cgroup {cg}")

    def cgroup_id(self, cg):
        """The kernel's cgroup id: the inode number of the directory (what BPF sees)."""
        try:
            return os.stat(self.path(cg)).st_ino
        except OSError as err:
            _raise(err, f"stat of cgroup {cg}")

    # --- raw files ----------------------------------------------------------
    def read(self, cg, name):
        try:
            return read_text(self.path(cg, name))
        except OSError as err:
            _raise(err, f"reading {cg}/{name}")

    def write(self, cg, name, value):
        """Write `value`; a value of several lines is written one line per write(2), as
        the keyed files (io.max, io.weight: one device per line) take them."""
        try:
            fd = os.open(self.path(cg, name), os.O_WRONLY)
        except OSError as err:
            _raise(err, f"opening {cg}/{name}")
        text = str(value)
        line = text
        try:
            for line in ([x for x in text.split("\n") if x] if "\n" in text else [text]):
                os.write(fd, line.encode())
        except OSError as err:
            _raise(err, f"writing {line!r} to {cg}/{name}")
        finally:
            os.close(fd)

    def has(self, cg, name):
        return os.path.exists(self.path(cg, name))

    def write_if_offered(self, cg, name, value):
        """Write a file the kernel may not offer here (its controller off): False when it
        does not, CgroupGone when the cgroup itself is gone. One open instead of a stat
        and an open on the per-tool-call path; the stat is paid only when the file is
        missing."""
        try:
            self.write(cg, name, value)
            return True
        except CgroupGone:
            if self.exists(cg):
                return False
            raise

    def reclaim(self, cg, nbytes):
        """Ask the kernel to reclaim `nbytes` from `cg` now (memory.reclaim): anonymous pages
        go to swap where the cgroup may swap, page cache is dropped or written back. True
        when it reclaimed all of it; False when it could not (the kernel's EAGAIN: nothing
        more it may take, e.g. anonymous memory with no swap). CgroupGone when `cg` is gone."""
        try:
            self.write(cg, MEMORY_RECLAIM, str(int(nbytes)))
            return True
        except KernelError as err:
            if getattr(err.__cause__, "errno", None) == errno.EAGAIN:
                return False
            raise

    def read_if_offered(self, cg, name):
        """A file's text, or None where the kernel does not offer it (see write_if_offered)."""
        try:
            return self.read(cg, name)
        except CgroupGone:
            if self.exists(cg):
                return None
            raise

    def read_int(self, cg, name):
        """An integer file; 'max' reads as None."""
        return parse_int(self.read(cg, name))

    def read_flat_keyed(self, cg, name):
        return parse_flat_keyed(self.read(cg, name))

    def peak_from_now(self, cg):
        """`cg`'s memory.peak opened and reset for this descriptor (Linux 6.12+), so that
        reads through it give the most `cg` has held since the call, not since it was
        made. A kernel without the reset leaves the file as it was: `PeakFile.reset` says
        which one the reads give."""
        try:
            f = open(self.path(cg, MEMORY_PEAK), "r+")
        except OSError as err:
            _raise(err, f"opening {cg}/{MEMORY_PEAK}")
        try:
            f.write("reset\n")
            f.flush()
            reset = True
        except OSError:
            reset = False
        return PeakFile(f, reset)

    # --- membership ---------------------------------------------------------
    def procs(self, cg):
        return [int(x) for x in self.read(cg, PROCS).split()]

    def move(self, cg, pid):
        """Move `pid` (0 = the caller) into `cg`."""
        try:
            self.write(cg, PROCS, pid)
        except CgroupGone:
            raise
        except KernelError as err:
            cause = err.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.ESRCH:
                from ..errors import ProcessGone
                raise ProcessGone(f"process {pid} is gone") from cause
            raise

    def populated(self, cg):
        return self.read_flat_keyed(cg, EVENTS).get("populated", 0) == 1

    def frozen(self, cg):
        return self.read_flat_keyed(cg, EVENTS).get("frozen", 0) == 1

    # --- controllers --------------------------------------------------------
    def controllers(self, cg=""):
        return self.read(cg, CONTROLLERS).split()

    def subtree_control(self, cg=""):
        return self.read(cg, SUBTREE_CONTROL).split()

    def enable_controllers(self, cg, wanted=WANTED_CONTROLLERS):
        """Enable the wanted controllers that `cg` offers for its children.

        Returns the set now enabled. A controller the parent does not offer is skipped,
        not an error: the caller reports what is missing once.
        """
        have = set(self.controllers(cg))
        on = set(self.subtree_control(cg))
        todo = [c for c in wanted if c in have and c not in on]
        if todo:
            try:
                self.write(cg, SUBTREE_CONTROL, " ".join("+" + c for c in todo))
            except KernelError:
                # One at a time, so one refused controller does not cost the others.
                for c in todo:
                    try:
                        self.write(cg, SUBTREE_CONTROL, "+" + c)
                    except KernelError:
                        pass
        return set(self.subtree_control(cg))

    # --- actions ------------------------------------------------------------
    def freeze(self, cg, frozen=True):
        self.write(cg, FREEZE, "1" if frozen else "0")

    def kill(self, cg):
        """Kill every process in the subtree (cgroup.kill, Linux 5.14+), else SIGKILL each."""
        if self.has(cg, KILL):
            self.write(cg, KILL, "1")
            return
        for _ in range(10):
            pids = self.procs(cg)
            if not pids:
                return
            for pid in pids:
                self._kill_member(cg, pid, signal.SIGKILL)

    def _kill_member(self, cg, pid, sig):
        """Signal `pid` only while it is still a member of `cg`: held by a pidfd, its
        membership read, then the signal sent through the pidfd, so a pid reused since
        cgroup.procs was read is never signalled."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return                    # gone already
        try:
            mine = own_cgroup(pid).strip("/")
            if mine != cg.strip("/") and not mine.startswith(cg.strip("/") + "/"):
                return
            signal.pidfd_send_signal(fd, sig)
        except (OSError, KernelError):
            pass
        finally:
            os.close(fd)

    def wait_empty(self, cg, timeout):
        """Poll until no process is left in the subtree. True if it emptied in time."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                if not self.populated(cg):
                    return True
            except CgroupGone:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def destroy(self, cg, timeout):
        """Kill what runs in `cg`'s subtree, wait up to `timeout` s for it to empty, and
        remove the subtree; nothing to do when it is gone already."""
        if not self.exists(cg):
            return
        self.kill(cg)
        self.wait_empty(cg, timeout)
        self.remove_tree(cg)

    def remove_tree(self, cg):
        """Remove `cg` and all its descendants (deepest first). Must be empty of processes.
        A part someone else removes meanwhile (the daemon and a cleanup racing) is done."""
        if not self.exists(cg):
            return
        try:
            children = self.children(cg)
        except CgroupGone:
            return
        for child in children:
            self.remove_tree(f"{cg}/{child}")
        self.rmdir(cg)
