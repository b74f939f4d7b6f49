import itertools
import os

import pytest

from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
from tests.helpers import DaemonProc, kill_tree

_seq = itertools.count()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/host/" in str(item.fspath):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def cgfs():
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        pytest.fail("host tests need root and a cgroup v2 hierarchy (see README: Tests)")
    return CgroupFS(mount)


@pytest.fixture
def test_root(cgfs):
    name = f"agentd-test-{os.getpid()}-{next(_seq)}"
    yield name
    kill_tree(cgfs, name)
    assert not cgfs.exists(name), f"test cgroup {name} left behind"


@pytest.fixture
def daemon(tmp_path, test_root):
    d = DaemonProc(str(tmp_path), test_root)
    d.start()
    yield d
    d.cleanup()
