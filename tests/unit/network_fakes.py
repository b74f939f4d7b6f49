"""Doubles of the egress kernel adapters (agentd/kernel/bpf_egress.py, kernel/qdisc.py, kernel/nft.py)
for tests of the network stage's logic; tests/host/test_egress.py and
tests/kernel/test_egress.py run the real ones."""


class FakeEgress:
    def __init__(self):
        self.entries, self.closed = {}, False

    def set(self, cgroup_id, rate_bytes_per_s=0, burst_bytes=0, classid=0):
        old = self.entries.get(cgroup_id, {"bytes": 0, "packets": 0, "delayed": 0, "drops": 0})
        self.entries[cgroup_id] = dict(old, rate_bps=rate_bytes_per_s, burst=burst_bytes, classid=classid)

    def clear(self, cgroup_id):
        return self.entries.pop(cgroup_id, None) is not None

    def counters(self, cgroup_id):
        return self.entries.get(cgroup_id)

    def close(self):
        self.closed = True


class FakeDevice:
    def __init__(self, ifname, mode=None, kernel_has_fq=True, leaf_kind="fq_codel"):
        self.ifname = ifname
        self.mode = mode or ("fq" if kernel_has_fq else "htb")
        self.classes, self.released = {}, False
        self.leaves = set()
        self.leaf_kind = leaf_kind
        self.stats = {}              # minor -> {'drops', 'overlimits'}: what a test says htb counted

    def class_stats(self):
        if self.mode != "htb":
            return {}
        return {m: dict(self.stats.get(m, {"drops": 0, "overlimits": 0})) for m in self.classes}

    def set_class(self, minor, rate, burst, parent_minor=None, ceil_bytes_per_s=None, leaf=False):
        self.classes[minor] = (rate, ceil_bytes_per_s or rate, parent_minor)
        if leaf:
            self.leaves.add(minor)
        return (0xA9E0 << 16) | minor

    def remove_class(self, minor):
        self.stats.pop(minor, None)      # the kernel's counters go with the class
        return self.classes.pop(minor, None) is not None

    def release(self):
        self.released = True


class FakeClassifier:
    """The nftables adapter: one rule per cgroup id, deeper levels first."""

    def __init__(self, devices):
        self.devices, self.rules, self.closed = list(devices), {}, False

    def set(self, cgroup_id, level, classid):
        self.rules[cgroup_id] = (level, classid)

    def clear(self, cgroup_id):
        return self.rules.pop(cgroup_id, None) is not None

    def counters(self, cgroup_id):
        return {"bytes": 1000, "packets": 1} if cgroup_id in self.rules else None

    def close(self):
        self.closed = True


def no_program(root_dir, root_rel):
    from agentd.errors import BpfError
    raise BpfError("egress: cgroup_skb programs are not permitted (EPERM)")
