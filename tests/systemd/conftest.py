"""The systemd tier runs inside a guest booted with systemd as PID 1 (tests/systemd/run.py).
Elsewhere pyproject's addopts deselect it (`-m 'not systemd'`); run by hand on a host
without systemd as init, its fixture fails with that message rather than skipping."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def systemd_is_pid1():
    with open("/proc/1/comm") as f:
        init = f.read().strip()
    assert init == "systemd", f"PID 1 is {init!r}: run this tier with tests/systemd/run.py"

