"""Disk I/O per agent and per tool call (policy `io`): io.weight shares each disk between
agents (HIGH agents' builds before LOW agents') and between an agent's calls; io.max caps
bytes and operations per second on the disks `io.devices` names.

A resource added the way every resource is: this stage (stage.py, with the pure planning
in plan.py), one kernel adapter (kernel/blkio.py: disks, io.* files, iocost) and its schema
fields (policy/resources.py IoLimits, policy/sections.py IoConfig).

`build(app)` is what the daemon calls: None where the policy asks nothing of the disk;
FeatureMissing (one warning) where the kernel offers no io controller below agentd's root.
"""

from ..errors import FeatureMissing
from ..kernel import blkio
from ..stages import offered


def build(app):
    from .plan import asks_io
    if not asks_io(app.policy):
        return None
    if not offered(app, blkio.IO_STAT):
        raise FeatureMissing(f"the io controller is not enabled on cgroup v2 under {app.ctl.agents_cgroup} "
                             "(bound to cgroup v1, or not offered by the kernel): the policy's io weights and "
                             "maxima are not written")
    from .stage import IoStage
    return IoStage(app)
