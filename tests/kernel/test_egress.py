"""Egress limits on the VM's kernel: the fq (departure time) mode, which needs sch_fq (the
host's kernel has none, so tests/host/test_egress.py covers the htb mode there), and the
nft mode (no BPF: nftables rules pick htb classes, with fq_codel leaves, which the VM's
kernel has and the host's has not).

Two network namespaces joined by a veth pair; senders in cgroups of a test tree, the
BPF program attached to the tree (or agentd's nftables table in the sending namespace),
fq (or htb) on the sending device; the receiver measures.
"""

import os

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


def neighbour_keeps_its_share(solo, got, free, rate):
    """The guest is CPU-bound (software emulation): what an unlimited sender carries alone
    (`solo`) is what the guest can carry, and beside a limited one it keeps at least 90% of
    that less what the limited one sent. Meaningful where that share is well above the
    limit (a neighbour held to anyone's rate would fall short of it); None where it is not."""
    room = solo - got
    if room < 2 * rate * MBIT:
        return None
    return free >= 0.9 * room


def test_fq_mode_holds_a_call_to_its_rate_and_an_unlimited_agent_keeps_its_own(cgtree, pair, figure):
    fs = cgtree.fs
    for cg in ("a", "a/t1", "b"):
        fs.mkdir(f"{cgtree.name}/{cg}")
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx)
    try:
        assert dev.mode == FQ and dev.root_kind()[0] == FQ
        with Egress(fs.path(cgtree.name), cgtree.name) as eg:
            t1 = os.stat(fs.path(f"{cgtree.name}/a/t1")).st_ino
            b = fs.path(f"{cgtree.name}/b", "cgroup.procs")
            (solo,) = pair.measure([b])       # what the guest carries: one unlimited sender alone
            figure("fq mode, an unlimited sender alone", f"{solo / MBIT:.0f}", "Mbit/s")
            checked = 0
            for rate in (10, 50, 200):
                eg.set(t1, rate * MBIT, 64 * 1024)
                got, free = pair.measure([fs.path(f"{cgtree.name}/a/t1", "cgroup.procs"), b])
                figure(f"egress limit {rate} Mbit/s: measured (unlimited neighbour, % of its solo rate)",
                       f"{got / MBIT:.1f} ({free / MBIT:.0f}, {100 * free / solo:.0f}%)", "Mbit/s")
                assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
                c = eg.counters(t1)
                assert c["delayed"] > 0 and c["drops"] == 0, c
                kept = neighbour_keeps_its_share(solo, got, free, rate)
                assert kept is not False, (rate, solo / MBIT, got / MBIT, free / MBIT)
                checked += kept is True
            # The neighbour with no limit is not held to anyone's rate.
            assert checked, f"the guest carried only {solo / MBIT:.0f} Mbit/s alone: no limit left room to check"
    finally:
        dev.release()
    assert dev.root_kind() == before


def test_fq_mode_a_call_spends_its_agents_rate_and_counts_once(cgtree, pair, figure):
    """Agent a limited to 40 Mbit/s, its call t1 to 10: the call holds to 10, the agent's
    own process gets the rest of the 40 (a call held back by its own rate does not hold its
    agent's other traffic behind it), and each packet is counted in one entry only."""
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
            call, main = pair.measure([t1_procs, a_procs])
            figure("fq mode, agent 40 Mbit/s with a call at 10: call / agent's own process",
                   f"{call / MBIT:.1f} / {main / MBIT:.1f}", "Mbit/s")
            assert 0.9 * 10 * MBIT <= call <= 1.1 * 10 * MBIT, call / MBIT
            assert main >= 0.9 * 30 * MBIT, main / MBIT
            assert call + main <= 1.1 * 40 * MBIT, (call + main) / MBIT
            # Counted once: the agent's entry holds its own process's bytes, ~3x the call's.
            ca, ct = eg.counters(a)["bytes"], eg.counters(t1)["bytes"] - before
            assert ca <= 1.15 * (main / call) * ct, (ca, ct, main / call)
    finally:
        dev.release()


def test_nft_mode_holds_a_call_to_its_rate_and_an_unlimited_agent_keeps_its_own(cgtree, pair, figure):
    fs = cgtree.fs
    for cg in ("a", "a/t1", "b"):
        fs.mkdir(f"{cgtree.name}/{cg}")
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx, mode=HTB)
    cl = nft.Classifier(["tx0"], netns=pair.tx)
    try:
        t1 = f"{cgtree.name}/a/t1"
        t1_id = os.stat(fs.path(t1)).st_ino
        b = fs.path(f"{cgtree.name}/b", "cgroup.procs")
        (solo,) = pair.measure([b])
        figure("nft mode, an unlimited sender alone", f"{solo / MBIT:.0f}", "Mbit/s")
        checked = 0
        for rate in (10, 50, 200):
            classid = dev.set_class(1, rate * MBIT, 64 * 1024, leaf=True)
            cl.set(t1_id, cgroup_level(t1), classid)
            sent = cl.counters(t1_id)["bytes"]
            got, free = pair.measure([fs.path(t1, "cgroup.procs"), b])
            figure(f"nft mode, egress limit {rate} Mbit/s: measured (unlimited neighbour, % of its solo rate)",
                   f"{got / MBIT:.1f} ({free / MBIT:.0f}, {100 * free / solo:.0f}%)", "Mbit/s")
            assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
            # The rule counted the call's ~3 s and nothing of the neighbour's (which sent more).
            counted = cl.counters(t1_id)["bytes"] - sent
            assert 2 * got <= counted <= 5 * got, (counted, got)
            kept = neighbour_keeps_its_share(solo, got, free, rate)
            assert kept is not False, (rate, solo / MBIT, got / MBIT, free / MBIT)
            checked += kept is True
        assert checked, f"the guest carried only {solo / MBIT:.0f} Mbit/s alone: no limit left room to check"
        # The VM's kernel has fq_codel: each leaf class queues in it.
        assert dev.leaf_kind == "fq_codel" and dev.leaf_qdisc(1) == "fq_codel"
    finally:
        cl.close()
        dev.release()
    assert dev.root_kind() == before
    assert nft.tables(pair.tx) == []
