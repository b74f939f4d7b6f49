"""Fixtures for the kernel tier (tests marked `kernel`, run inside the VM by run.py).

Outside the guest these tests are deselected by the default addopts; a run that selects
them anyway (`pytest -m kernel` on the host) errors out instead of passing silently,
because the host's cgroup v2 tree has no controllers and proves nothing.
"""

import itertools
import os
import signal
import subprocess

import pytest

from agentd.kernel.cgroupfs import CgroupFS

from .kernel_support import CONTROLLERS, State, TestTree

HERE = os.path.dirname(os.path.abspath(__file__))

IN_GUEST = os.environ.get("AGENTD_KERNEL_TIER") == "1"
CGROUP_ROOT = "/sys/fs/cgroup"


def pytest_runtest_setup(item):
    if item.get_closest_marker("kernel") and not IN_GUEST:
        pytest.fail("kernel-tier test outside the kernel-tier VM: run `python3 tests/kernel/run.py`",
                    pytrace=False)


# A hung test must fail on its own rather than run the whole VM into run.py's timeout
# and take every test after it down too.
TEST_TIMEOUT = int(os.environ.get("AGENTD_KERNEL_TEST_TIMEOUT", "240"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not IN_GUEST or not item.get_closest_marker("kernel"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"kernel-tier test ran past {TEST_TIMEOUT} s "
                           "(AGENTD_KERNEL_TEST_TIMEOUT); stack above shows where it hung")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_runtest_logreport(report):
    # pytest prints failures only at the end of the session, which a VM run that hits
    # run.py's timeout never reaches: write each one down as it happens (run.py prints them).
    out = os.environ.get("AGENTD_KERNEL_TIER_OUT")
    if IN_GUEST and out and report.failed:
        with open(os.path.join(out, "failures.txt"), "a") as f:
            f.write(f"=== {report.nodeid} ({report.when}) ===\n{report.longreprtext}\n\n")


@pytest.fixture(scope="session")
def cgfs():
    """The guest's cgroup v2 root, with the tier's controllers enabled for its children."""
    fs = CgroupFS(CGROUP_ROOT)
    missing = set(CONTROLLERS) - fs.enable_controllers("", CONTROLLERS)
    assert not missing, f"{CGROUP_ROOT} cannot enable {sorted(missing)}: not the kernel-tier guest?"
    return fs


@pytest.fixture
def cgtree(cgfs):
    """A fresh test cgroup (memory/cpu/pids enabled below it), killed and removed afterwards."""
    tree = TestTree(cgfs)
    try:
        yield tree
    finally:
        tree.cleanup()


@pytest.fixture(scope="session")
def hog(tmp_path_factory):
    """Path of the workload program (hog.c): prebuilt by run.py on the host, or compiled
    here when the tests run some other way (slow under emulation)."""
    prebuilt = os.path.join(os.environ.get("AGENTD_KERNEL_TIER_BIN", "/nonexistent"), "hog")
    if os.access(prebuilt, os.X_OK):
        return prebuilt
    exe = str(tmp_path_factory.mktemp("hog") / "hog")
    build = subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", exe, os.path.join(HERE, "hog.c")],
                           capture_output=True, text=True)
    if build.returncode:
        pytest.fail(f"compiling hog.c failed:\n{build.stderr}", pytrace=False)
    return exe


@pytest.fixture
def state(tmp_path):
    """Factory for workload state files in this test's tmp dir."""
    names = itertools.count()
    return lambda: State(tmp_path / f"state-{next(names)}")


@pytest.fixture
def figure(request):
    """Record a measured figure: printed, and collected by run.py into its summary."""
    def record(name, value, unit=""):
        line = f"{request.node.name}: {name} = {value} {unit}".rstrip()
        print(line)
        out = os.environ.get("AGENTD_KERNEL_TIER_OUT")
        if out:
            with open(os.path.join(out, "figures.txt"), "a") as f:
                f.write(line + "\n")
    return record
