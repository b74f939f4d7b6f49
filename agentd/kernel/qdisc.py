"""The egress devices' queueing disciplines, through pyroute2 (rtnetlink).

Egress limits need a qdisc that holds packets back (agentd/kernel/bpf_egress.py):
- **fq** honours the departure time the BPF program stamps on each packet (EDT). It
  replaces the device's root qdisc (on a multi-queue device, each queue's qdisc under mq).
- **htb** where the kernel has no fq (CONFIG_NET_SCH_FQ off), or where no BPF program
  can run: one class per limited cgroup, the agent's class the parent of its calls'
  classes, the rates in the classes; the BPF program or the nftables rules
  (agentd/kernel/nft.py) pick the class through skb->priority. Traffic of no class goes
  out unshaped (htb's default class 0). Each leaf class queues in fq_codel (flows of one
  class share it fairly, and a standing queue is kept short), else sfq, else htb's
  default pfifo where the kernel has neither.

agentd touches only the devices the policy names, and only a root qdisc the kernel made
(handle 0: — noqueue, pfifo_fast, fq_codel, mq by default): a qdisc someone configured
is theirs, and agentd refuses the device with an error that says so. On stop it deletes
what it added, and the kernel puts its default back.
"""

import asyncio
import concurrent.futures
import errno
import os

from ..errors import KernelError

TC_H_ROOT = 0xFFFFFFFF
FQ, HTB = "fq", "htb"
HTB_MAJOR = 0xA9E0             # agentd's htb handle A9E0: (unlikely to be one's own)
MAX_MINOR = 0xFFFF
LEAF_KINDS = ("fq_codel", "sfq")   # a leaf class's queue, the first the kernel has
BURST_FLOOR_S = 0.010          # an htb class's burst holds at least this long of its rate


def kernel_has_qdisc(kind, release=None, sys_root="/sys", modules_root="/lib/modules"):
    """Does the kernel offer qdisc `kind` (a module loaded, built in, or installed to load
    on demand)? Read without creating one, for `agentd doctor`."""
    mod = f"sch_{kind}"
    if os.path.isdir(os.path.join(sys_root, "module", mod)):
        return True
    release = release or os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(modules_root, release, name)) as f:
                if any(os.path.basename(line.split(":")[0]).split(".")[0] == mod for line in f):
                    return True
        except OSError:
            continue
    return False


NETLINK_TIMEOUT_S = 10.0
_worker = None


def _off_loop(fn):
    """Run `fn` where pyroute2 can: its synchronous API drives an asyncio loop of its own,
    which cannot run inside the daemon's running loop, so there it runs on a worker thread
    (a netlink round trip is well under a millisecond; the wait is bounded)."""
    global _worker
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    if _worker is None:
        _worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentd-netlink")
    try:
        return _worker.submit(fn).result(timeout=NETLINK_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise KernelError(f"rtnetlink did not answer within {NETLINK_TIMEOUT_S:g} s") from None


def _ipr(netns=None):
    # Imported here: the daemon runs without pyroute2 when no policy limits the network.
    try:
        from pyroute2 import IPRoute, NetNS
    except ImportError as err:
        raise KernelError("pyroute2 is not installed: network limits need it (pip install pyroute2)") from err
    return NetNS(netns) if netns else IPRoute()


def _nl_error(what, err):
    code = err.code if hasattr(err, "code") else getattr(err, "errno", None)
    text = getattr(err, "args", ("",))[-1]
    return KernelError(f"{what}: {text} (errno {code})")


def _queue_stats(msg):
    """A qdisc's or class's TCA_STATS2 / TCA_STATS_QUEUE (drops, overlimits, ...), or {}."""
    st = msg.get_attr("TCA_STATS2")
    qs = st.get_attr("TCA_STATS_QUEUE") if st is not None else None
    return dict(qs) if qs else {}


def root_qdisc(ifname, netns=None):
    """(kind, handle) of the device's root qdisc; (None, 0) when it lists none (a device
    that is down shows no noqueue)."""
    return _off_loop(lambda: _root_qdisc(ifname, netns))


def _root_qdisc(ifname, netns):
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise KernelError(f"network device {ifname!r} does not exist")
        for q in ipr.get_qdiscs(index=idx[0]):
            if q["parent"] == TC_H_ROOT:
                return q.get("kind"), q["handle"]
    return None, 0


class Device:
    """One egress device agentd shapes: `mode` fq or htb; remembers whether it changed the
    root qdisc, so release() puts the kernel's default back only then."""

    def __init__(self, ifname, netns=None, mode=None):
        self.ifname, self.netns = ifname, netns
        self.mode = None
        self.changed = False
        self.handle = None
        self.classes = set()
        self.leaf_kinds = list(LEAF_KINDS)   # those not yet refused by the kernel
        self.leaf_kind = None                # the leaf qdisc in use; None: htb's default pfifo
        _off_loop(lambda: self._open(mode))

    def _open(self, mode):
        ifname, netns = self.ifname, self.netns
        with _ipr(netns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise KernelError(f"network device {ifname!r} does not exist"
                                  + (f" in network namespace {netns}" if netns else ""))
            self.index = idx[0]
            self._take(ipr, mode)

    def _root(self, ipr):
        for q in ipr.get_qdiscs(index=self.index):
            if q["parent"] == TC_H_ROOT:
                return q
        return None

    def _take(self, ipr, mode):
        root = self._root(ipr)
        kind = root.get("kind") if root is not None else None
        handle = root["handle"] if root is not None else 0
        if kind == FQ and mode in (None, FQ):
            self.mode = FQ            # already there (someone's own): used, left on release
            return
        if handle != 0 and not (kind == HTB and handle >> 16 == HTB_MAJOR):
            raise KernelError(
                f"network device {self.ifname} has a root qdisc {kind} {handle >> 16:x}: that agentd did not "
                f"set; agentd leaves it alone. Remove it (tc qdisc del dev {self.ifname} root) or take "
                f"{self.ifname} out of network.devices")
        if mode in (None, FQ):
            try:
                ipr.tc("replace", FQ, index=self.index, root=True)
                self.mode, self.changed = FQ, True
                self.handle = self._root(ipr)["handle"]    # the kernel picks it
                return
            except Exception as err:           # noqa: BLE001 — pyroute2's NetlinkError
                if getattr(err, "code", None) != errno.ENOENT or mode == FQ:
                    raise _nl_error(f"setting fq on {self.ifname}", err) from err
                # ENOENT: the kernel has no fq qdisc; htb needs no departure times.
        try:
            ipr.tc("replace", HTB, index=self.index, handle=HTB_MAJOR << 16, root=True, default=0)
        except Exception as err:               # noqa: BLE001
            raise _nl_error(f"setting htb on {self.ifname}", err) from err
        self.mode, self.changed, self.handle = HTB, True, HTB_MAJOR << 16

    def set_class(self, minor, rate_bytes_per_s, burst_bytes, parent_minor=None, ceil_bytes_per_s=None,
                  leaf=False):
        """htb mode: the class HTB_MAJOR:minor with this rate (guaranteed) and ceil (the
        most it may borrow up to; default: the rate), below the class `parent_minor` or the
        root. Returns the classid for skb->priority. htb queues packets in leaf classes
        only: a class with classes below it passes what is sent to it straight out, so a
        limited cgroup with limited descendants needs a leaf of its own for its own
        traffic (a sibling of theirs). `leaf`: the class holds packets, so it gets a leaf
        qdisc of LEAF_KINDS (leaf_kind says which; None: the kernel has none of them)."""
        if self.mode != HTB:
            raise KernelError(f"{self.ifname}: classes exist in htb mode only (mode {self.mode})")
        if not 0 < minor <= MAX_MINOR:
            raise KernelError(f"htb class minor {minor} is outside 1..{MAX_MINOR}")
        classid = (HTB_MAJOR << 16) | minor
        parent = (HTB_MAJOR << 16) | parent_minor if parent_minor else HTB_MAJOR << 16
        rate = max(int(rate_bytes_per_s), 1)
        ceil = max(int(ceil_bytes_per_s or rate), rate)
        # htb sends a class's tokens when its timer fires: a burst below what the rate sends
        # in BURST_FLOOR_S leaves the class short of its rate wherever timers run late (a
        # loaded or virtual machine: 156 Mbit/s of 200 with a 64 KiB burst in the kernel tier).
        burst = max(int(burst_bytes), 1600, int(rate * BURST_FLOOR_S))
        _off_loop(lambda: self._set_class(minor, classid, parent, rate, ceil, burst, leaf))
        self.classes.add(minor)
        return classid

    def _set_class(self, minor, classid, parent, rate, ceil, burst, leaf):
        with _ipr(self.netns) as ipr:
            try:
                ipr.tc("replace-class", HTB, index=self.index, handle=classid, parent=parent,
                       rate=f"{rate * 8}bit", ceil=f"{ceil * 8}bit", burst=burst, cburst=burst)
            except Exception as err:           # noqa: BLE001
                raise _nl_error(f"setting htb class {minor:x} on {self.ifname}", err) from err
            while leaf and self.leaf_kinds:
                kind = self.leaf_kinds[0]
                try:
                    # No handle: the kernel picks one; the leaf goes with its class.
                    ipr.tc("replace", kind, index=self.index, parent=classid)
                    self.leaf_kind = kind
                    return
                except Exception as err:       # noqa: BLE001
                    if getattr(err, "code", None) != errno.ENOENT:
                        raise _nl_error(f"setting {kind} below htb class {minor:x} on {self.ifname}", err) from err
                    self.leaf_kinds.pop(0)     # ENOENT: the kernel has no such qdisc
                    self.leaf_kind = None

    def leaf_qdisc(self, minor):
        """The kind of the qdisc below class `minor` (None: htb's default or no class)."""
        def read():
            classid = (HTB_MAJOR << 16) | minor
            with _ipr(self.netns) as ipr:
                for q in ipr.get_qdiscs(index=self.index):
                    if q["parent"] == classid:
                        return q.get_attr("TCA_KIND")
            return None
        return _off_loop(read)

    def class_stats(self):
        """htb mode: {minor: {'drops', 'overlimits'}} of agentd's classes on this device.
        drops: what the class's leaf qdisc dropped (a full queue, or fq_codel's standing
        queue), read from the leaf where agentd set one (its count holds what htb counts
        in the class too), else from the class (htb's default pfifo is not listed);
        overlimits: how often the class ran out of its rate or ceiling and held packets
        back (htb counts the switch to "can't send"). {} in fq mode."""
        if self.mode != HTB:
            return {}
        return _off_loop(self._class_stats)

    def _class_stats(self):
        with _ipr(self.netns) as ipr:
            try:
                classes = ipr.get_classes(index=self.index)
                leaves = ipr.get_qdiscs(index=self.index)
            except Exception as err:           # noqa: BLE001
                raise _nl_error(f"reading htb class stats on {self.ifname}", err) from err
        leaf_drops = {}
        for q in leaves:
            parent = q["parent"]
            if parent != TC_H_ROOT and parent >> 16 == HTB_MAJOR:
                leaf_drops[parent & 0xFFFF] = _queue_stats(q).get("drops", 0)
        out = {}
        for c in classes:
            if c["handle"] >> 16 != HTB_MAJOR:
                continue
            minor = c["handle"] & 0xFFFF
            qs = _queue_stats(c)
            out[minor] = {"drops": leaf_drops.get(minor, qs.get("drops", 0)),
                          "overlimits": qs.get("overlimits", 0)}
        return out

    def remove_class(self, minor):
        if minor not in self.classes:
            return False
        _off_loop(lambda: self._remove_class(minor))
        self.classes.discard(minor)
        return True

    def _remove_class(self, minor):
        with _ipr(self.netns) as ipr:
            try:
                ipr.tc("del-class", index=self.index, handle=(HTB_MAJOR << 16) | minor)
            except Exception as err:           # noqa: BLE001
                if getattr(err, "code", None) not in (errno.ENOENT, errno.EINVAL):
                    raise _nl_error(f"removing htb class {minor:x} on {self.ifname}", err) from err

    def root_kind(self):
        return root_qdisc(self.ifname, self.netns)

    def release(self):
        """Delete the root qdisc agentd set (the kernel puts its default back)."""
        if not self.changed:
            return
        _off_loop(self._release)
        self.changed = False
        self.classes.clear()

    def _release(self):
        with _ipr(self.netns) as ipr:
            try:
                ipr.tc("del", index=self.index, handle=self.handle, root=True)
            except Exception as err:           # noqa: BLE001
                if getattr(err, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise _nl_error(f"restoring {self.ifname}'s qdisc", err) from err
