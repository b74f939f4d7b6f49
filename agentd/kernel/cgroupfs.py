"""cgroup v2 filesystem adapter: the tree, its files' reads and writes, membership,
controllers and the freeze/kill actions.

Every cgroupfs file name agentd uses is named once, in cgroup_files.py (with the format of
what the files hold), and re-exported here: callers write cgroupfs.MEMORY_HIGH. Finding
the hierarchy is cgroup_mount.py's. All paths are relative to a `root` given by the caller,
so tests can point the adapter at a fake tree on disk (see `fakes.py`) or at the real
hierarchy.
"""

import errno
import os
import signal
import time

from ..errors import CgroupGone, KernelError
from .cgroup_files import (  # noqa: F401 — re-exported: the one front for cgroupfs names
    CGROUP_MAX_DESCENDANTS, CONTROLLERS, CPU_MAX, CPU_PRESSURE, CPU_STAT, CPU_WEIGHT, EVENTS, FREEZE, FRESH_DEFAULTS,
    IO_PRESSURE, KILL, MEMORY_CURRENT, MEMORY_EVENTS, MEMORY_HIGH, MEMORY_LOW, MEMORY_MAX, MEMORY_MIN,
    MEMORY_OOM_GROUP, MEMORY_PEAK, MEMORY_PRESSURE, MEMORY_RECLAIM, MEMORY_STAT, MEMORY_SWAP_MAX, PIDS_CURRENT,
    PIDS_MAX, PROCS, STAT, SUBTREE_CONTROL, WANTED_CONTROLLERS, controller_of, flat_key, limit_values,
    parse_flat_keyed, parse_int)
from .cgroup_mount import MOUNTS, cgroup2_mounts, find_cgroup2_mount  # noqa: F401 — re-exported
from .files import read_text
from .procfs import own_cgroup

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
        # Asked for every file of every tool call (tens of times per call): plain string
        # joins, not os.path.join.
        cg = cg.strip("/")
        p = f"{self.mount.rstrip('/')}/{cg}" if cg else self.mount
        return f"{p.rstrip('/')}/{name}" if name else p

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
