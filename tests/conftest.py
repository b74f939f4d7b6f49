import itertools
import os

import pytest

# Tests always read the repository's shipped policies, never copies an earlier
# `agentd install` left in /etc/agentd/policies.
os.environ["AGENTD_POLICY_DIR"] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "policies")

# `agentd run` started through sudo runs the agent as the invoking user: under `sudo pytest`
# every test agent would lose root. Tests that want that set SUDO_UID themselves.
for _k in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND"):
    os.environ.pop(_k, None)

_seq = itertools.count()


@pytest.fixture(scope="session")
def cgfs():
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        pytest.fail("these tests need root and a cgroup v2 hierarchy (see README: Tests)")
    return CgroupFS(mount)


@pytest.fixture
def test_root(cgfs):
    """A unique cgroup name for one test; everything below it is killed and removed after."""
    from tests.helpers import kill_tree
    name = f"agentd-test-{os.getpid()}-{next(_seq)}"
    yield name
    kill_tree(cgfs, name)
    assert not cgfs.exists(name), f"test cgroup {name} left behind"


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a test left a daemon's socket folder in /tmp (DaemonProc
    makes them outside pytest's tmp, so only its cleanup() removes them); remove them."""
    import shutil
    from tests.helpers import DaemonProc
    left = [(d, who) for d, who in DaemonProc.made if os.path.exists(d)]
    if not left:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for d, who in left:
        if tr is not None:
            tr.write_line(f"left behind: {d} (made by {who}; call DaemonProc.cleanup())", red=True)
        shutil.rmtree(d, ignore_errors=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def daemon(tmp_path, test_root):
    """A real `agentd daemon` subprocess owning `test_root`."""
    from tests.helpers import DaemonProc
    d = DaemonProc(str(tmp_path), test_root)
    d.start()
    yield d
    d.cleanup()

try:
    from hypothesis import HealthCheck, settings
    # Tests assert behaviour, not timings: this 2-core machine is often busy, so no
    # per-example deadline; and no example database littering the tree.
    settings.register_profile("agentd", deadline=None, database=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("agentd")
except ImportError:
    pass
