"""Egress limits without BPF (mode nft) on the host kernel: nftables rules (agentd/kernel/nft.py)
pick each packet's htb class by its socket's cgroup; a veth pair between two network
namespaces, TCP senders in cgroups of a test tree, the rate measured by the receiver.

The table and the qdisc live in the sending namespace, which the test makes and removes,
so nothing of the host's own nftables or devices is touched.
"""

import os
import subprocess
import sys
import time

import pytest

from agentd.errors import KernelError
from agentd.kernel import nft
from agentd.kernel.bpf_egress import cgroup_level
from agentd.kernel.qdisc import HTB, Device, root_qdisc
from tests.host.egress_support import MBIT, cgid, pair, tree  # noqa: F401 — fixtures

NETNS_TAG = "nft"             # this module's network namespaces: agentd-nft-<pid>-tx, -rx


def procs(cgfs, cg):
    return cgfs.path(cg, "cgroup.procs")


def test_the_probe_changes_nothing(pair):
    assert nft.probe(pair.tx) is None
    assert nft.tables(pair.tx) == []


def test_nft_mode_holds_an_agent_to_its_rate_and_leaves_its_neighbour_alone(cgfs, tree, pair):
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx, mode=HTB)
    cl = nft.Classifier(["tx0"], netns=pair.tx)
    try:
        assert dev.mode == HTB and nft.tables(pair.tx) == ["agentd"]
        a = f"{tree}/agents/a"
        for rate in (10, 50):
            classid = dev.set_class(1, rate * MBIT, 32 * 1024, leaf=True)
            cl.set(cgid(cgfs, a), cgroup_level(a), classid)
            # A sender in the agent's tool call: the agent's rule matches its ancestor at the agent's level.
            got, free = pair.measure([procs(cgfs, f"{a}/tools/t1"), procs(cgfs, f"{tree}/agents/b")])
            assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
            assert free > 2 * rate * MBIT, (rate, free / MBIT)     # agent b has no limit
            c = cl.counters(cgid(cgfs, a))
            assert c["packets"] > 0 and c["bytes"] >= 2.5 * got, c  # ~3 s of the agent's packets
    finally:
        cl.close()
        dev.release()
    assert dev.root_kind() == before == ("noqueue", 0)
    assert nft.tables(pair.tx) == []


def test_a_tool_calls_rule_decides_before_its_agents(cgfs, tree, pair):
    dev = Device("tx0", netns=pair.tx, mode=HTB)
    cl = nft.Classifier(["tx0"], netns=pair.tx)
    try:
        a, t1 = f"{tree}/agents/a", f"{tree}/agents/a/tools/t1"
        dev.set_class(1, 40 * MBIT, 32 * 1024)                 # the agent's share
        own = dev.set_class(3, MBIT, 32 * 1024, parent_minor=1, ceil_bytes_per_s=40 * MBIT, leaf=True)
        call = dev.set_class(2, 10 * MBIT, 32 * 1024, parent_minor=1, leaf=True)
        # The agent's rule first, its call's after: the call's rule still goes before it.
        cl.set(cgid(cgfs, a), cgroup_level(a), own)
        cl.set(cgid(cgfs, t1), cgroup_level(t1), call)
        assert [r[0] for r in cl.listing()] == [cgid(cgfs, t1), cgid(cgfs, a)]
        got_call, got_main = pair.measure([procs(cgfs, t1), procs(cgfs, a)])
        assert 0.9 * 10 * MBIT <= got_call <= 1.1 * 10 * MBIT, got_call / MBIT
        assert got_call + got_main <= 1.1 * 40 * MBIT, (got_call + got_main) / MBIT
        assert got_main >= 0.9 * 30 * MBIT, got_main / MBIT
        # Each packet is counted once, by its deepest cgroup's rule.
        c_call, c_main = cl.counters(cgid(cgfs, t1)), cl.counters(cgid(cgfs, a))
        assert c_main["bytes"] > 2 * c_call["bytes"] > 0, (c_call, c_main)
        # The call ends: its rule goes, the agent's stays and goes on counting.
        assert cl.clear(cgid(cgfs, t1)) and not cl.clear(cgid(cgfs, t1))
        assert [r[0] for r in cl.listing()] == [cgid(cgfs, a)]
        got_t1, = pair.measure([procs(cgfs, t1)])
        assert 0.9 * 40 * MBIT <= got_t1 <= 1.1 * 40 * MBIT, got_t1 / MBIT  # now under the agent's rate
        assert cl.counters(cgid(cgfs, a))["bytes"] > c_main["bytes"]
    finally:
        cl.close()
        dev.release()


def test_many_rules_cost_no_chain_dump_per_call_and_one_per_scrape(pair):
    """An agent makes a rule per limited tool call (and each lingers after its call), and
    any local user may scrape the metrics, which read every rule's counters. A dump of the
    chain costs the daemon ~0.4 ms a rule: a rule's add or removal must not dump it (that
    made each call's start O(rules), 0.7 s at 200 rules, on the daemon's loop), and one
    scrape of every rule's counters dumps it once (it dumped it per rule: O(rules^2), 22 s
    at 200 rules, each dump queued before the daemon's next rule change)."""
    cl = nft.Classifier(["tx0"], netns=pair.tx)
    try:
        ids = [1000 + i for i in range(60)]
        for i, cid in enumerate(ids):          # agents (level 2) and calls (level 3) interleaved
            cl.set(cid, 2 if i % 3 == 0 else 3, 0xA9E00001 + i)
        for cid in ids[::4]:
            assert cl.clear(cid)
        for cid in ids[::8]:                   # a cgroup's rule set again: replaced in place
            cl.set(cid, 3, 0xA9E00F00)
        assert cl.dumps == 0
        live = [c for c in ids if c in cl.rules]
        assert all(cl.counters(c) == {"bytes": 0, "packets": 0} for c in live)
        assert cl.dumps == 1
        # The order kept without dumps is the kernel's: deeper cgroups first.
        kernel = cl.listing()
        assert [c for c, _, _ in kernel] == cl._chain and sorted(c for c, _, _ in kernel) == sorted(live)
        levels = [lv for _, lv, _ in kernel]
        assert levels == sorted(levels, reverse=True), levels
    finally:
        cl.close()


def test_a_leaf_class_gets_the_first_leaf_qdisc_the_kernel_has(pair):
    dev = Device("tx0", netns=pair.tx, mode=HTB)
    try:
        dev.set_class(1, 10 * MBIT, 32 * 1024, leaf=True)
        dev.set_class(2, 10 * MBIT, 32 * 1024)
        # fq_codel where the kernel has it (the kernel tier's), else sfq, else htb's default
        # (this host's kernel has neither: leaf_kind None and no qdisc of agentd's below the class).
        assert dev.leaf_kind in (None, "fq_codel", "sfq")
        assert dev.leaf_qdisc(1) == dev.leaf_kind
        assert dev.leaf_qdisc(2) is None
        # A qdisc the kernel lacks is passed over for the next one (here: pfifo, which every kernel has).
        dev.leaf_kinds = ["fq_codel", "sfq", "pfifo"]
        dev.set_class(3, 10 * MBIT, 32 * 1024, leaf=True)
        assert dev.leaf_qdisc(3) == dev.leaf_kind and dev.leaf_kind in ("fq_codel", "sfq", "pfifo")
        dev.remove_class(3)
        assert dev.leaf_qdisc(3) is None                   # the leaf goes with its class
    finally:
        dev.release()


def test_other_tables_are_left_alone_and_a_foreign_agentd_table_is_refused(pair):
    # A table of someone else's beside agentd's survives agentd's start and stop.
    other = nft.Classifier.__new__(nft.Classifier)
    other.netns, other.devices = pair.tx, []
    other_name = f"theirs{os.getpid()}"
    P, _, Socket = nft._messages()

    def make(name, owner=False):
        s = Socket(pair.tx)
        other._sock = s
        other._batch("test table", [other._msg(P["N"].nft_table_msg, P["N"].NFT_MSG_NEWTABLE, P["NLM_F_CREATE"],
                                               name=name, **({"flags": nft.NFT_TABLE_F_OWNER} if owner else {}))])
        return s
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(make, other_name).result().close()        # not owned: it outlives the socket
        cl = nft.Classifier(["tx0"], netns=pair.tx)
        assert nft.tables(pair.tx) == sorted(["agentd", other_name])
        cl.close()
        assert nft.tables(pair.tx) == [other_name]
        # A table named agentd that this agentd did not make: refused, left as it was.
        ex.submit(make, "agentd").result().close()
        with pytest.raises(KernelError, match="did not make"):
            nft.Classifier(["tx0"], netns=pair.tx)
        assert nft.tables(pair.tx) == sorted(["agentd", other_name])
    with pytest.raises(KernelError, match="not a network interface name"):
        nft.device_rule("x" * 16)
    with pytest.raises(KernelError, match="outside 0..255"):
        nft.class_rule(1, 256, 0)


CHILD = r"""
import sys, time
from agentd.kernel import nft
c = nft.Classifier(["tx0"], netns=sys.argv[1])
c.set(1, 0, 0xA9E00001)
print("ready", flush=True)
time.sleep(600)
"""


def test_the_table_goes_with_the_process_that_made_it(pair):
    # A daemon killed outright leaves no rules behind: the table belongs to its netlink socket.
    p = subprocess.Popen([sys.executable, "-c", CHILD, pair.tx], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=os.getcwd(), env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        assert nft.tables(pair.tx) == ["agentd"]
    finally:
        p.kill()
        p.wait(timeout=30)
    deadline = time.monotonic() + 10
    while nft.tables(pair.tx) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nft.tables(pair.tx) == []
