"""Test doubles for kernel interfaces: a cgroup v2 tree on an ordinary directory.

It has the interface files the host lacks (memory.*, cpu.*, pids.*) so the logic that
writes limits can be unit-tested; real placement, freezing and killing are tested on
the real hierarchy (tests/host, tests/kernel).
"""

import errno
import os

from . import blkio
from . import cgroupfs as cgf

_DEFAULTS = {
    cgf.PROCS: "", cgf.EVENTS: "populated 0\nfrozen 0\n", cgf.FREEZE: "0", cgf.KILL: "",
    cgf.CONTROLLERS: "cpu memory pids io", cgf.SUBTREE_CONTROL: "",
    cgf.MEMORY_CURRENT: "0", cgf.MEMORY_PEAK: "0", cgf.MEMORY_MIN: "0", cgf.MEMORY_LOW: "0",
    cgf.MEMORY_HIGH: "max", cgf.MEMORY_MAX: "max", cgf.MEMORY_OOM_GROUP: "0", cgf.MEMORY_EVENTS: "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    cgf.MEMORY_PRESSURE: "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    cgf.CPU_WEIGHT: "100", cgf.CPU_MAX: "max 100000", cgf.CPU_STAT: "usage_usec 0\n",
    cgf.PIDS_MAX: "max", cgf.PIDS_CURRENT: "0", cgf.MEMORY_RECLAIM: "",
    cgf.IO_PRESSURE: "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    blkio.IO_WEIGHT: "default 100", blkio.IO_BFQ_WEIGHT: "default 100", blkio.IO_MAX: "", blkio.IO_STAT: "",
}


class FakeCgroupFS(cgf.CgroupFS):
    """A CgroupFS over a plain directory; mkdir also creates the interface files."""

    def __init__(self, root):
        super().__init__(root)
        os.makedirs(root, exist_ok=True)
        self.writes = []              # (cgroup, file, value), in order
        self._populate(self.mount)

    def _populate(self, path):
        for name, val in _DEFAULTS.items():
            p = os.path.join(path, name)
            if not os.path.exists(p):
                with open(p, "w") as f:
                    f.write(val)

    def mkdir(self, cg, exist_ok=True):
        made = super().mkdir(cg, exist_ok)
        self._populate(self.path(cg))
        return made

    def rmdir(self, cg):
        p = self.path(cg)
        if not os.path.isdir(p):
            return False
        if any(os.path.isdir(os.path.join(p, e)) for e in os.listdir(p)):
            raise cgf.KernelError(f"removing cgroup {cg}: Device or resource busy")
        for e in os.listdir(p):
            os.unlink(os.path.join(p, e))
        os.rmdir(p)
        return True

    def children(self, cg):
        p = self.path(cg)
        return sorted(e for e in os.listdir(p) if os.path.isdir(os.path.join(p, e)))

    def write(self, cg, name, value):
        if name in _DEFAULTS and not os.path.exists(self.path(cg, name)):
            # As the kernel: an interface file a test removed (its controller off here)
            # cannot be created by writing. Other names are fixtures a test sets up.
            cgf._raise(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), f"opening {cg}/{name}")
        self.writes.append((cg.strip("/"), name, str(value)))
        if name == cgf.PROCS:
            # Moving a process: append to the target's list (no removal elsewhere: enough for tests).
            with open(self.path(cg, name), "a") as f:
                f.write(f"{value}\n")
            return
        if name == cgf.MEMORY_RECLAIM:
            # As the kernel with room in swap: memory.current falls by what was asked, and
            # asking for more than the cgroup holds takes it all and fails with EAGAIN.
            cur = cgf.parse_int(self.read(cg, cgf.MEMORY_CURRENT)) or 0
            with open(self.path(cg, cgf.MEMORY_CURRENT), "w") as f:
                f.write(str(max(0, cur - int(value))))
            if int(value) > cur:
                cgf._raise(OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)), f"writing {value!r} to {cg}/{name}")
            return
        if name == cgf.FREEZE:
            with open(self.path(cg, cgf.EVENTS), "w") as f:
                f.write(f"populated 0\nfrozen {value}\n")
        if name == cgf.SUBTREE_CONTROL:
            cur = set(self.read(cg, name).split())
            for tok in str(value).split():
                (cur.add if tok[0] == "+" else cur.discard)(tok[1:])
            value = " ".join(sorted(cur))
        with open(self.path(cg, name), "w") as f:
            f.write(str(value))

    def cgroup_id(self, cg):
        return os.stat(self.path(cg)).st_ino


class FakeProc:
    """Stands in for kernel.pidfd.Proc over a fake /proc: a pid that stays the same process
    until `exit()` is called (then verify() raises ProcessGone, as a recycled pid would)."""

    def __init__(self, pid):
        self.pid = pid
        self.gone = False

    def alive(self):
        return not self.gone

    def verify(self):
        if self.gone:
            from ..errors import ProcessGone
            raise ProcessGone(f"process {self.pid} has exited")

    def exit(self):
        self.gone = True

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
