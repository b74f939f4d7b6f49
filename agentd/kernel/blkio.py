"""Block devices and the cgroup v2 io controller's files.

A policy names a disk by a path (a file or directory on it, or its device node) or by
"major:minor"; `resolve` turns either into the whole disk the io controller takes. io.max
and io.weight refuse a partition (ENODEV), so a partition resolves to the disk that holds
it: a limit on /home on sda2 is a limit on sda. A path on a file system with no block
device of its own (tmpfs, overlay, NFS; btrfs reports an anonymous device) has no disk to
limit and is an error that says so.

io.weight is the iocost controller's weight (blk-iocost, CONFIG_BLK_CGROUP_IOCOST): it
shares a disk only where iocost is enabled on it (`io.cost.qos` at the root of the
hierarchy). A disk whose I/O scheduler is bfq shares by io.bfq.weight instead. On any
other disk weights are written and change nothing: `weight_mode` tells which case holds,
for `agentd doctor` and the daemon's log.
"""

import os
import re
import stat
from dataclasses import dataclass

from ..errors import AgentdError, KernelError

SYS_DEV_BLOCK = "/sys/dev/block"

IO_WEIGHT = "io.weight"            # iocost: "default N" and "MAJ:MIN N" lines
IO_BFQ_WEIGHT = "io.bfq.weight"    # bfq: the same format
IO_MAX = "io.max"                  # blk-throttle: "MAJ:MIN rbps=N wbps=N riops=N wiops=N"
IO_STAT = "io.stat"                # "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N ..."
IO_COST_QOS = "io.cost.qos"        # root only: "MAJ:MIN enable=0|1 ctrl=auto|user ..."
MAX_KEYS = ("rbps", "wbps", "riops", "wiops")

_MAJMIN_RE = re.compile(r"^(\d{1,10}):(\d{1,10})$")


@dataclass(frozen=True)
class BlockDevice:
    major: int
    minor: int
    name: str                      # the kernel's name of the disk (sda, vda, loop0, dm-0)
    spec: str                      # as the policy wrote it

    @property
    def dev(self):
        return f"{self.major}:{self.minor}"


def is_majmin(spec):
    return bool(_MAJMIN_RE.match(str(spec)))


def resolve(spec, sys_dev_block=SYS_DEV_BLOCK):
    """The whole disk `spec` (an absolute path, or "major:minor") stands for; AgentdError
    with what to write instead when there is none."""
    spec = str(spec)
    m = _MAJMIN_RE.match(spec)
    if m:
        major, minor = int(m.group(1)), int(m.group(2))
    elif spec.startswith("/"):
        unsafe = redirectable(spec)
        if unsafe:
            raise AgentdError(f"{spec}: {unsafe}, who could point it at another disk (agentd turns iocost on "
                              "for the disk it names and limits agents there): name a path only root controls "
                              "(the file system's mount point, or the disk's /dev node) or MAJOR:MINOR")
        try:
            st = os.stat(spec)
        except OSError as err:
            raise AgentdError(f"{spec}: {err.strerror}: name an existing path on the disk to limit, "
                              "or the disk as MAJOR:MINOR (`lsblk` lists them)") from None
        if stat.S_ISCHR(st.st_mode):
            raise AgentdError(f"{spec} is a character device, not a disk: name a block device, a path on the "
                              "disk, or MAJOR:MINOR (`lsblk` lists them)")
        dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
        major, minor = os.major(dev), os.minor(dev)
    else:
        raise AgentdError(f"{spec!r} is not a block device: write an absolute path (a file or directory on the "
                          "disk, or its /dev node) or MAJOR:MINOR such as 8:0")
    link = os.path.join(sys_dev_block, f"{major}:{minor}")
    try:
        real = os.path.realpath(link, strict=True)
    except OSError:
        if not m and major == 0:
            raise AgentdError(f"{spec} is on a file system with no block device of its own (device {major}:{minor}: "
                              "tmpfs, overlay, NFS or btrfs): name the disk under it as MAJOR:MINOR "
                              "(`lsblk` lists them)") from None
        raise AgentdError(f"{spec}: there is no block device {major}:{minor} on this host "
                          "(`lsblk` lists the disks)") from None
    if os.path.exists(os.path.join(real, "partition")):
        # The io controller takes whole disks only: the partition's parent is the disk.
        real = os.path.dirname(real)
        try:
            with open(os.path.join(real, "dev")) as f:
                major, minor = (int(x) for x in f.read().split(":"))
        except (OSError, ValueError) as err:
            raise KernelError(f"{spec}: cannot read the disk holding partition {os.path.basename(real)}: "
                              f"{err}") from None
    return BlockDevice(major, minor, os.path.basename(real), spec)


MAX_LINKS = 40                     # the kernel's bound on symbolic links in one lookup


def _unsafe(path, st, trusted, last=False):
    """Why `path` (lstat `st`) is not root's alone, or None. The folder a path ends in may
    be writable by others (a shared mount point): writing in it lets no one replace it."""
    if st.st_uid not in trusted:
        return f"{path} belongs to uid {st.st_uid}"
    if not last and stat.S_ISDIR(st.st_mode) and st.st_mode & (0o002 | (0o020 if st.st_gid not in trusted else 0)) \
            and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by users other than root (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def redirectable(path, trusted=None):
    """Who, other than root, could make `path` name a file on another device, or None.

    The daemon resolves `io.devices` paths as root, at every start and reload, and writes
    limits (and iocost) for the disk they name: every folder on the way, every symbolic
    link followed and the path itself must be root's (the daemon's uid), and no folder
    on the way writable by others unless sticky (there a root-owned entry is root's to move). What
    this trusts is each file's owner and mode as the kernel reports them (lstat), walked
    component by component as the kernel's lookup does. A path that does not exist is
    left to the caller's stat."""
    trusted = {0, os.geteuid()} if trusted is None else trusted
    todo = [p for p in path.split("/") if p]
    cur, links = "/", 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except OSError:
            return None
        why = _unsafe(nxt, st, trusted, last=not todo)
        if why:
            return why
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None           # ELOOP: the caller's stat says so
            target = os.readlink(nxt)
            todo = [p for p in target.split("/") if p] + todo
            if target.startswith("/"):
                cur = "/"
        else:
            cur = nxt
    return None


def scheduler(dev, sys_dev_block=SYS_DEV_BLOCK):
    """The disk's active I/O scheduler ("mq-deadline", "bfq", "none"), None if unknown."""
    try:
        with open(os.path.join(sys_dev_block, dev, "queue", "scheduler")) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip() or None


# --- file contents -----------------------------------------------------------------------

def weight_value(weight):
    """io.weight / io.bfq.weight contents for a cgroup's weight on every disk."""
    return f"default {int(weight)}"


BFQ_WEIGHT_MAX = 1000               # bfq's range is 1..1000, iocost's 1..10000


def bfq_weight_value(weight):
    return f"default {min(int(weight), BFQ_WEIGHT_MAX)}"


def max_line(dev, rbps=None, wbps=None, riops=None, wiops=None):
    """One io.max line, every key written (None = "max") so that it reads back the same."""
    vals = dict(rbps=rbps, wbps=wbps, riops=riops, wiops=wiops)
    return f"{dev} " + " ".join(f"{k}={'max' if vals[k] is None else int(vals[k])}" for k in MAX_KEYS)


def parse_keyed_lines(text):
    """Lines "MAJ:MIN key=value ..." (io.stat, io.max, io.cost.qos) as {dev: {key: value}};
    numbers as int, "max" and words as they are."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not _MAJMIN_RE.match(parts[0]):
            continue
        fields = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            try:
                fields[k] = int(v)
            except ValueError:
                try:
                    fields[k] = float(v)
                except ValueError:
                    fields[k] = v
        out[parts[0]] = fields
    return out


def iocost_enabled(fs, dev):
    """Is iocost on for `dev` (io.cost.qos at the hierarchy's root)? None where the kernel
    has no iocost or the file cannot be read."""
    text = _root_qos(fs)
    if text is None:
        return None
    return parse_keyed_lines(text).get(dev, {}).get("enable") == 1


def set_iocost(fs, dev, enable):
    """Turn iocost on (with the kernel's automatic parameters) or off for `dev`."""
    how = "on" if enable else "off"
    if not fs.has("", IO_COST_QOS):
        raise KernelError(f"cannot turn iocost {how} for {dev}: no {IO_COST_QOS} at the root of the cgroup v2 "
                          "hierarchy (a kernel without CONFIG_BLK_CGROUP_IOCOST, or a namespaced mount)")
    try:
        fs.write("", IO_COST_QOS, f"{dev} enable={1 if enable else 0}")
    except AgentdError as err:
        raise KernelError(f"cannot turn iocost {how} for {dev}: {err}") from None


def _root_qos(fs):
    try:
        return fs.read_if_offered("", IO_COST_QOS)
    except AgentdError:
        return None


def weight_mode(fs, dev, sys_dev_block=SYS_DEV_BLOCK):
    """What shares `dev` among cgroups by weight: "iocost", "bfq", or "none"."""
    if iocost_enabled(fs, dev):
        return "iocost"
    if scheduler(dev, sys_dev_block) == "bfq":
        return "bfq"
    return "none"


def stat_totals(text):
    """io.stat summed over its disks: {rbytes, wbytes, rios, wios} (the keys every kernel
    since 4.16 prints; missing ones count 0)."""
    tot = dict.fromkeys(("rbytes", "wbytes", "rios", "wios"), 0)
    for fields in parse_keyed_lines(text).values():
        for k in tot:
            v = fields.get(k)
            if isinstance(v, int):
                tot[k] += v
    return tot

