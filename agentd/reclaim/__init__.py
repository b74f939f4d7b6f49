"""Idle agents' memory given back while they wait for their model (senpai / TMO style).

An agent spends most of its wall time waiting for its model, holding a heap it does not
touch. While none of its tool calls runs, this stage asks the kernel to reclaim that
memory in steps (memory.reclaim on the agent's own cgroup, `main`: a tool call's cgroup is
never the target), and stops while the agent's memory pressure shows it faulting pages
back. With swap on zram or zswap, anonymous pages leave the budget compressed; without
swap, only page cache goes and the kernel says so (EAGAIN), which backs the stage off.

`pacer.py` decides (pure), `stage.py` reads and acts through the actuator.
`build(app)` raises FeatureMissing where the kernel offers no memory.reclaim (before 5.19)
or the policy turns it off.
"""

from .stage import ReclaimStage

__all__ = ["ReclaimStage", "build"]


def build(app):
    return ReclaimStage.for_app(app)
