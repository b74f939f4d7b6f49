"""Signals that stand in for what the BPF programs cannot do themselves: resuming a task
the lifecycle program stopped at exec. The /proc reads the user-space fallbacks need live
in agentd.kernel.procfs (one adapter for /proc); re-exported here for their callers.
"""

import os
import signal

from .procfs import PAGE_SIZE, ProcFS, ProcInfo  # noqa: F401


def resume(pid):
    """SIGCONT a task agentd stopped at exec. False if it is already gone."""
    try:
        os.kill(pid, signal.SIGCONT)
        return True
    except ProcessLookupError:
        return False
