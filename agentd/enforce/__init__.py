"""Enforcement: forecasts become limits, pressure becomes ladder steps, memory becomes admission.

Pure decision code (ladder.py, admission.py, limits.py) is kept apart from the code that
writes to the kernel (actuator.py) and the wiring into the daemon (enforcer.py), so the
decisions are tested with literals and the writes in one place can be dry-run.

`build(app)` is what the daemon calls; it returns the hook object.
  AGENTD_DRY_RUN=1             decide and log, write nothing
  AGENTD_PRESSURE_FILE=PATH    read the root's pressure from PATH (PSI format) instead of
                               the kernel: for tests that drive the ladder without a hog
"""

import os

from .enforcer import Enforcer


def build(app):
    return Enforcer(app, dry_run=getattr(app.cfg, "dry_run", False) or os.environ.get("AGENTD_DRY_RUN") == "1",
                    fake_pressure_file=os.environ.get("AGENTD_PRESSURE_FILE") or None,
                    available_fn=getattr(app, "available_memory", None))
