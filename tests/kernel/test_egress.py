"""Egress limits on the VM's kernel: the fq (departure time) mode, which needs sch_fq (the
host's kernel has none, so tests/host/test_egress.py covers the htb mode there), and the
nft mode (no BPF: nftables rules pick htb classes, with fq_codel leaves, which the VM's
kernel has and the host's has not).

Two network namespaces joined by a veth pair; senders in cgroups of a test tree, the
BPF program attached to the tree (or agentd's nftables table in the sending namespace),
fq (or htb) on the sending device; the receiver measures.
"""

import os
import time

import pytest

from agentd.kernel import nft
from agentd.kernel.bpf_egress import Egress, cgroup_level
from agentd.kernel.qdisc import FQ, HTB, Device, root_qdisc
from tests.net_support import NetPair

pytestmark = pytest.mark.kernel

MBIT = 1_000_000 // 8          # bytes/s


@pytest.fixture
def pair():
    p = NetPair(f"agentd-net-{os.getpid()}")
    yield p
    p.close()


def rates_side_by_side(pair, figure, mode, rate, limited, neighbour, reference):
    """One limited sender (`limited`: its cgroup.procs), an unlimited neighbour agent, and an
    unlimited reference sender in a sibling cgroup of the neighbour's (`reference`), all at
    once; before them the neighbour alone.

    The guest is CPU-bound (software emulation) and shares two host cores with other work,
    so what it carries swings several-fold from one run to the next: the neighbour alone
    (`solo`, recorded) is what it carried a moment before, and the reference, which no
    limit touches, is what an unlimited sender gets beside the limited one in the same
    seconds, from a sibling cgroup of the neighbour's. Where the reference got at least
    three times the limit (the guest carried the limit then, with room), the limited sender
    gets at least 85% of its limit and the neighbour more than 120% of it (a neighbour held
    to the call's limit would get at most 110%). Less room is not enough: a shaped sender
    costs the guest more CPU per byte than an unlimited one and waits on timers, so in a
    guest starved by two other VMs one limited to 50 Mbit/s sent 31 beside a reference at
    132, and one limited to 200 sent 143 beside a reference at 229. How the unlimited two
    split what is left is the CPU scheduler's doing in a CPU-bound guest, not the limit's,
    and swings with the host's load: the neighbour got 37-159% of the reference's rate in
    runs of this test, so that share is recorded, not asserted. A quiet guest under QEMU
    7.2 carried a reference of 360-467 Mbit/s beside a 200 Mbit/s sender, so the 200
    Mbit/s floors are checked only on a faster guest; the ceiling is checked at every
    rate. Returns (limited's rate, whether the floors were checked)."""
    (solo,) = pair.measure([neighbour])
    got, free, ref = pair.measure([limited, neighbour, reference])
    figure(f"{mode} mode, egress limit {rate} Mbit/s: limited / unlimited neighbour / reference "
           f"(the neighbour alone before)", f"{got / MBIT:.1f} / {free / MBIT:.0f} / {ref / MBIT:.0f} "
           f"({solo / MBIT:.0f})", "Mbit/s")
    assert got <= 1.1 * rate * MBIT, (rate, got / MBIT)
    carried = ref >= 3 * rate * MBIT
    if carried:
        assert got >= 0.85 * rate * MBIT, (rate, got / MBIT, ref / MBIT)
        assert free > 1.2 * rate * MBIT, (rate, free / MBIT, ref / MBIT)
    return got, carried


def test_fq_mode_holds_a_call_to_its_rate_and_an_unlimited_agent_keeps_its_own(cgtree, pair, figure):
    fs = cgtree.fs
    for cg in ("a", "a/t1", "b", "ref"):
        fs.mkdir(f"{cgtree.name}/{cg}")
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx)
    try:
        assert dev.mode == FQ and dev.root_kind()[0] == FQ
        with Egress(fs.path(cgtree.name), cgtree.name) as eg:
            t1 = os.stat(fs.path(f"{cgtree.name}/a/t1")).st_ino
            b = fs.path(f"{cgtree.name}/b", "cgroup.procs")
            checked = []
            for rate in (10, 50, 200):
                eg.set(t1, rate * MBIT, 64 * 1024)
                _, ok = rates_side_by_side(pair, figure, "fq", rate, fs.path(f"{cgtree.name}/a/t1", "cgroup.procs"), b,
                                           fs.path(f"{cgtree.name}/ref", "cgroup.procs"))
                checked += [rate] if ok else []
                c = eg.counters(t1)
                assert c["delayed"] > 0 and c["drops"] == 0, c
            assert 10 in checked, "the guest did not carry 30 Mbit/s beside a 10 Mbit/s sender: nothing was checked"
            figure("fq mode, limits checked in full (the guest carried them)", str(checked))
    finally:
        dev.release()
    assert dev.root_kind() == before


def test_fq_mode_a_call_spends_its_agents_rate_and_counts_once(cgtree, pair, figure):
    """Agent a limited to 40 Mbit/s, its call t1 to 10: the call never exceeds 10, the
    agent's own process gets the rest of the 40 (a call held back by its own rate does not
    hold its agent's other traffic behind it), both together hold to 40, and each packet is
    counted in one entry only. Departure times share the agent's rate in the order packets
    come, not fairly: beside an agent's own process that fills the agent's rate, a call may
    get less than its own (3.6 of 10 Mbit/s in one run); htb mode guarantees it."""
    fs = cgtree.fs
    for cg in ("a", "a/t1"):
        fs.mkdir(f"{cgtree.name}/{cg}")
    dev = Device("tx0", netns=pair.tx)
    try:
        with Egress(fs.path(cgtree.name), cgtree.name) as eg:
            a = os.stat(fs.path(f"{cgtree.name}/a")).st_ino
            t1 = os.stat(fs.path(f"{cgtree.name}/a/t1")).st_ino
            eg.set(a, 40 * MBIT, 64 * 1024)
            eg.set(t1, 10 * MBIT, 64 * 1024)
            a_procs, t1_procs = (fs.path(f"{cgtree.name}/{cg}", "cgroup.procs") for cg in ("a", "a/t1"))
            (alone,) = pair.measure([t1_procs], secs=2.0)
            assert 0.9 * 10 * MBIT <= alone <= 1.1 * 10 * MBIT, alone / MBIT
            assert eg.counters(a)["bytes"] == eg.counters(a)["packets"] == 0, eg.counters(a)
            assert eg.counters(t1)["bytes"] >= 1.5 * alone, (eg.counters(t1), alone)
            before = eg.counters(t1)["bytes"]
            t0 = time.monotonic()
            call, main = pair.measure([t1_procs, a_procs])
            took = time.monotonic() - t0
            figure("fq mode, agent 40 Mbit/s with a call at 10: call / agent's own process",
                   f"{call / MBIT:.1f} / {main / MBIT:.1f}", "Mbit/s")
            assert call <= 1.1 * 10 * MBIT, call / MBIT
            assert main >= 0.9 * (40 * MBIT - call), (main / MBIT, call / MBIT)
            # The agent's rate bounds the sum of both. The receivers' rates cover windows
            # that start and end apart (a sender starts late in a loaded guest), so the sum
            # is read from the counters (each packet once) over the whole measurement.
            both = eg.counters(a)["bytes"] + eg.counters(t1)["bytes"] - before
            assert both <= 1.1 * 40 * MBIT * took + 64 * 1024, (both, took)
            # The agent's own process counts in the agent's entry, the call's in the call's only.
            assert eg.counters(a)["bytes"] > 0 and eg.counters(t1)["bytes"] > before
    finally:
        dev.release()


def test_nft_mode_holds_a_call_to_its_rate_and_an_unlimited_agent_keeps_its_own(cgtree, pair, figure):
    fs = cgtree.fs
    for cg in ("a", "a/t1", "b", "ref"):
        fs.mkdir(f"{cgtree.name}/{cg}")
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx, mode=HTB)
    cl = nft.Classifier(["tx0"], netns=pair.tx)
    try:
        t1 = f"{cgtree.name}/a/t1"
        t1_id = os.stat(fs.path(t1)).st_ino
        b = fs.path(f"{cgtree.name}/b", "cgroup.procs")
        checked = []
        for rate in (10, 50, 200):
            classid = dev.set_class(1, rate * MBIT, 64 * 1024, leaf=True)
            cl.set(t1_id, cgroup_level(t1), classid)
            sent = cl.counters(t1_id)["bytes"]
            got, ok = rates_side_by_side(pair, figure, "nft", rate, fs.path(t1, "cgroup.procs"), b,
                                         fs.path(f"{cgtree.name}/ref", "cgroup.procs"))
            checked += [rate] if ok else []
            # The rule counted the call's ~3 s and nothing of the others' (which sent more).
            counted = cl.counters(t1_id)["bytes"] - sent
            assert 2 * got <= counted <= 5 * got, (counted, got)
            # htb held the class to its rate: its overlimits, read through rtnetlink, count it.
            assert dev.class_stats()[1]["overlimits"] > 0, dev.class_stats()
        assert 10 in checked, "the guest did not carry 30 Mbit/s beside a 10 Mbit/s sender: nothing was checked"
        figure("nft mode, limits checked in full (the guest carried them)", str(checked))
        # The VM's kernel has fq_codel: each leaf class queues in it.
        assert dev.leaf_kind == "fq_codel" and dev.leaf_qdisc(1) == "fq_codel"
    finally:
        cl.close()
        dev.release()
    assert dev.root_kind() == before
    assert nft.tables(pair.tx) == []
