"""The cgroup v2 interface files agentd uses: each file's name, named once, and the format
of what the files hold (pure: no I/O). cgroupfs.py reads and writes them; its callers name
a file as cgroupfs.MEMORY_HIGH, which is this module's name re-exported there.
"""

# File names, named once.
PROCS = "cgroup.procs"
EVENTS = "cgroup.events"
FREEZE = "cgroup.freeze"
KILL = "cgroup.kill"
CONTROLLERS = "cgroup.controllers"
SUBTREE_CONTROL = "cgroup.subtree_control"
STAT = "cgroup.stat"
MEMORY_CURRENT = "memory.current"
MEMORY_PEAK = "memory.peak"
MEMORY_MIN = "memory.min"
MEMORY_LOW = "memory.low"
MEMORY_HIGH = "memory.high"
MEMORY_MAX = "memory.max"
MEMORY_SWAP_MAX = "memory.swap.max"
MEMORY_EVENTS = "memory.events"
MEMORY_STAT = "memory.stat"
MEMORY_PRESSURE = "memory.pressure"
MEMORY_RECLAIM = "memory.reclaim"       # write N: the kernel reclaims N bytes from the cgroup now (5.19+)
CGROUP_MAX_DESCENDANTS = "cgroup.max.descendants"   # core file: mkdir below fails (EAGAIN) past it
MEMORY_OOM_GROUP = "memory.oom.group"     # 1: an OOM kill in the cgroup takes all of it
CPU_PRESSURE = "cpu.pressure"
IO_PRESSURE = "io.pressure"
CPU_WEIGHT = "cpu.weight"
CPU_MAX = "cpu.max"
CPU_STAT = "cpu.stat"
PIDS_MAX = "pids.max"
PIDS_CURRENT = "pids.current"

# What these files hold in a cgroup the kernel has just made (Documentation/admin-guide/
# cgroup-v2.rst): writing one of these values there changes nothing.
FRESH_DEFAULTS = {MEMORY_MIN: "0", MEMORY_LOW: "0", MEMORY_HIGH: "max", MEMORY_MAX: "max",
                  CPU_WEIGHT: "100", PIDS_MAX: "max"}


def controller_of(name):
    """The controller an interface file belongs to ("memory.high" -> "memory")."""
    return name.partition(".")[0]


# Controllers agentd enables down its tree when the kernel offers them.
WANTED_CONTROLLERS = ("cpu", "memory", "pids", "io")


def parse_int(text):
    """An integer file's text; 'max' is None."""
    s = text.strip()
    return None if s == "max" else int(s)


def parse_flat_keyed(text):
    """A flat-keyed file's text ("key value" lines) as {key: int}."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v:
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def flat_key(text, key):
    """One key of a flat-keyed file's text, or None when absent: memory.stat has some
    fifty lines, and the per-decision readers want one of them."""
    prefix = key + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix):])
            except ValueError:
                return None
    return None


def limit_values(limits, cpu_period_us=100_000):
    """The cgroup v2 file contents a tool call's or an agent's limits stand for (`limits`
    has the fields of agentd.policy.match.ToolLimits: bytes, CPUs, counts; None = "max")."""
    def v(n):
        return "max" if n is None else str(n)
    quota = "max" if limits.cpu_max is None else str(max(1000, int(limits.cpu_max * cpu_period_us)))
    return {MEMORY_MIN: v(limits.memory_min), MEMORY_LOW: v(limits.memory_low),
            MEMORY_HIGH: v(limits.memory_high), MEMORY_MAX: v(limits.memory_max),
            CPU_WEIGHT: str(limits.cpu_weight), CPU_MAX: f"{quota} {cpu_period_us}",
            PIDS_MAX: v(limits.pids_max)}
