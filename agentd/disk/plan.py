"""A class's io limits as cgroup file contents (pure: the disks are resolved by the caller)."""

from ..kernel import blkio


def asks_io(policy):
    """Does the policy ask anything of the disk (a weight or a maximum in any class, or a
    disk named)? Where it does not, no io file is ever written."""
    if policy.io.devices:
        return True
    classes = list(policy.agent_classes.values()) + list(policy.tool_classes.values())
    return any(c.io.weight is not None or c.io.maxima() is not None for c in classes)


def io_files(limits, devices, names=None):
    """{file: contents} for `limits` (policy.resources.IoLimits) on `devices` (kernel.blkio.BlockDevice,
    the disks io.devices names): io.weight and io.bfq.weight when a weight is set, io.max
    with one line per disk when a maximum is (each disk's own where the class gives it per
    disk; "max" where it gives other disks only, so a reload that drops a limit clears it).
    `names`: {MAJ:MIN: every io.devices entry that named that disk}; default: its spec.
    {} when the class sets neither."""
    out = {}
    if limits.weight is not None:
        out[blkio.IO_WEIGHT] = blkio.weight_value(limits.weight)
        out[blkio.IO_BFQ_WEIGHT] = blkio.bfq_weight_value(limits.weight)
    if limits.maxima() is not None and devices:
        names = names or {}
        out[blkio.IO_MAX] = "\n".join(
            blkio.max_line(d.dev, *limits.maxima_for(names.get(d.dev, (d.spec,)))) for d in devices)
    return out
