"""Helpers shared by the kernel-tier tests: test cgroups, workload state files, polling, a
daemon under test.

Imported by conftest.py and the test modules.
"""

import contextlib
import itertools
import os
import signal
import subprocess
import time

from agentd.kernel.cgroupfs import PROCS
from tests.helpers import DaemonProc

# The controllers every kernel-tier test cgroup gets.
CONTROLLERS = ("memory", "cpu", "pids")

_seq = itertools.count()


class TestTree:
    """A fresh cgroup `agentd-test-<pid>-<n>` with memory/cpu/pids enabled for its children.

    Processes live in leaf children (cgroup v2 allows no processes in a cgroup that
    distributes controllers). Everything is killed and removed on cleanup.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, fs):
        self.fs = fs
        self.name = f"agentd-test-{os.getpid()}-{next(_seq)}"
        fs.mkdir(self.name, exist_ok=False)
        missing = set(CONTROLLERS) - fs.enable_controllers(self.name, CONTROLLERS)
        assert not missing, f"cannot enable {sorted(missing)} in {self.name}"
        self.procs = []

    def child(self, name, **files):
        """Create a leaf cgroup; `files` are interface files to write, e.g. memory_max="32M"."""
        cg = f"{self.name}/{name}"
        self.fs.mkdir(cg, exist_ok=False)
        for key, value in files.items():
            self.fs.write(cg, key.replace("_", ".", 1), value)
        return cg

    def spawn(self, cg, argv, cpus=None):
        """Start `argv` directly inside `cg` (it joins before exec), optionally pinned."""
        procs_file = self.fs.path(cg, PROCS)

        def enter():
            # Runs in the child between fork and exec: no allocation-heavy work here.
            fd = os.open(procs_file, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        proc = subprocess.Popen(argv, preexec_fn=enter, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def events(self, cg, name="memory.events"):
        return self.fs.read_flat_keyed(cg, name)

    def cleanup(self):
        if self.fs.exists(self.name):
            self.fs.kill(self.name)
            emptied = self.fs.wait_empty(self.name, timeout=30)
        else:
            emptied = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        self.fs.remove_tree(self.name)
        assert emptied, f"{self.name} did not empty after cgroup.kill"


class State:
    """A workload's STATE file (see hog.c): one fixed-width line, rewritten in place."""

    def __init__(self, path):
        self.path = str(path)

    def fields(self):
        try:
            with open(self.path) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def value(self):
        """The first number in the line (0 before the first write)."""
        f = self.fields()
        return int(f[0]) if f and f[0].isdigit() else 0


def wait_for(pred, timeout, what, step=0.02):
    """Poll `pred` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)


def cpu_time_windows(cgfs, cgroups, windows=3, seconds=2.0, tainted=None):
    """The CPU time (usec, from each cgroup's cpu.stat) `cgroups` got in `windows`
    back-to-back windows of `seconds`, with each window's wall time: a list of
    (deltas, wall_us). Several windows, because a QEMU guest beside other busy VMs can
    lose its vCPU to the host for a while, and the one task that ran across that gap is
    charged all of it: one window can be skewed where the median is not.

    `tainted(start, end)` (wall-clock times) says a window does not measure what the caller
    wants, e.g. a daemon paused one of the cgroups in it: such a window is set aside and
    another taken, up to `windows` more. Returns (windows kept, windows set aside)."""
    def usage():
        return [cgfs.read_flat_keyed(cg, "cpu.stat")["usage_usec"] for cg in cgroups], time.monotonic(), time.time()
    kept, aside = [], 0
    before, t0, w0 = usage()
    while len(kept) < windows and aside <= windows:
        time.sleep(seconds)
        after, t1, w1 = usage()
        if tainted is not None and tainted(w0, w1):
            aside += 1
        else:
            kept.append(([b - a for a, b in zip(before, after)], (t1 - t0) * 1e6))
        before, t0, w0 = after, t1, w1
    return kept, aside


def keep_log(d, tag):
    """The daemon's log and events next to the tier's results (diagnosis after a VM run)."""
    out = os.environ.get("AGENTD_KERNEL_TIER_OUT")
    if out:
        for src, name in ((d.log_path, f"{tag}.daemon.log"), (d.event_log, f"{tag}.events.jsonl")):
            try:
                with open(src) as f, open(os.path.join(out, name), "w") as g:
                    g.write(f.read())
            except OSError:
                pass


@contextlib.contextmanager
def running_daemon(cgfs, tmp, tag, policy, **kw):
    """A real `agentd daemon` for a module's tests: `policy` (YAML text) written to
    tmp/policy.yaml, its root cgroup agentd-test-<pid>-<tag>, `kw` for DaemonProc (metrics,
    extra_env). Meant for a module-scoped fixture, so that its start (30-60 s under
    emulation) is outside any one test's time limit. Afterwards the daemon is stopped,
    whatever it left of its tree is killed and removed, and its log and events are kept
    with the tier's results as <tag>.daemon.log and <tag>.events.jsonl."""
    (tmp / "policy.yaml").write_text(policy)
    d = DaemonProc(str(tmp), f"agentd-test-{os.getpid()}-{tag}", policy=str(tmp / "policy.yaml"), **kw)
    try:
        d.start(timeout=300)
        yield d
    finally:
        keep_log(d, tag)
        d.cleanup()
        if cgfs.exists(d.root):
            cgfs.kill(d.root)
            cgfs.wait_empty(d.root, 30)
            cgfs.remove_tree(d.root)


def stop(proc):
    """End `proc` (SIGTERM, then SIGKILL after 60 s) and reap it; nothing when it is None or
    has ended."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
