"""Where the cgroup v2 hierarchy is mounted, and with which options: read from the mount
table (the path is a parameter, so tests can give it a file of their own)."""

import os

from .cgroup_files import CONTROLLERS

MOUNTS = "/proc/self/mounts"


def cgroup2_mounts(mounts=MOUNTS):
    """{mount point: mount options} of every cgroup v2 mount, in mount order ({} when the
    mount table cannot be read)."""
    found = {}
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "cgroup2":
                    found[parts[1].replace("\\040", " ")] = tuple(parts[3].split(","))
    except OSError:
        return {}
    return found


def find_cgroup2_mount(mounts=MOUNTS):
    """Return the mount point of the cgroup v2 hierarchy, or None.

    Pure v2 hosts mount it at /sys/fs/cgroup; hybrid hosts (v1 controllers plus a
    controller-less v2 tree) at /sys/fs/cgroup/unified. Prefer the one with controllers.
    """
    found = list(cgroup2_mounts(mounts))
    if not found:
        return None
    for path in found:
        try:
            with open(os.path.join(path, CONTROLLERS)) as f:
                if f.read().strip():
                    return path
        except OSError:
            continue
    return found[0]
