"""Swap per tool class: memory.swap.max (and memory.zswap.max where the kernel has it) from
the class's `memory: {swap_max: ...}` (0 unless the policy says otherwise).

A resource added the way every resource is: this stage (stage.py), one kernel adapter
(kernel/swap.py) and its schema field (policy/resources.py ToolMemoryLimits.swap_max).

`build(app)` is what the daemon calls; it raises FeatureMissing (one log line) where the
kernel offers no memory.swap.max, e.g. a kernel built without swap.
"""

from .stage import SwapStage

__all__ = ["SwapStage", "build"]


def build(app):
    return SwapStage.for_app(app)
