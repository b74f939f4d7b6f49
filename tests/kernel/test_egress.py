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
            free = None
            for rate in (10, 50, 200):
                eg.set(t1, rate * MBIT, 64 * 1024)
                got, free = pair.measure([fs.path(f"{cgtree.name}/a/t1", "cgroup.procs"),
                                          fs.path(f"{cgtree.name}/b", "cgroup.procs")])
                figure(f"egress limit {rate} Mbit/s: measured (unlimited neighbour)",
                       f"{got / MBIT:.1f} ({free / MBIT:.0f})", "Mbit/s")
                assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
                c = eg.counters(t1)
                assert c["delayed"] > 0 and c["drops"] == 0, c
            # The neighbour with no limit is not held to anyone's rate.
            assert free > 1.5 * 10 * MBIT, free / MBIT
    finally:
        dev.release()
    assert dev.root_kind() == before


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
        for rate in (10, 50, 200):
            classid = dev.set_class(1, rate * MBIT, 64 * 1024, leaf=True)
            cl.set(t1_id, cgroup_level(t1), classid)
            sent = cl.counters(t1_id)["bytes"]
            got, free = pair.measure([fs.path(t1, "cgroup.procs"), fs.path(f"{cgtree.name}/b", "cgroup.procs")])
            figure(f"nft mode, egress limit {rate} Mbit/s: measured (unlimited neighbour)",
                   f"{got / MBIT:.1f} ({free / MBIT:.0f})", "Mbit/s")
            assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
            # The rule counted the call's ~3 s and nothing of the neighbour's (which sent more).
            counted = cl.counters(t1_id)["bytes"] - sent
            assert 2 * got <= counted <= 5 * got, (counted, got)
            if rate < 200:
                assert free > 1.5 * rate * MBIT, (rate, free / MBIT)   # not held to anyone's rate
        # The VM's kernel has fq_codel: each leaf class queues in it.
        assert dev.leaf_kind == "fq_codel" and dev.leaf_qdisc(1) == "fq_codel"
    finally:
        cl.close()
        dev.release()
    assert dev.root_kind() == before
    assert nft.tables(pair.tx) == []
