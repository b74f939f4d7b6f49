"""The systemd tier runs inside a guest booted with systemd as PID 1 (tests/systemd/run.py).
Elsewhere pyproject's addopts deselect it (`-m 'not systemd'`); run by hand on a host
without systemd as init, its fixture fails with that message rather than skipping."""
