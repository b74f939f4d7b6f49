"""Egress limits on the host kernel: the BPF program (bpf/egress.bpf.c) attached to a
cgroup v2 subtree, a veth pair between two network namespaces, TCP senders in cgroups.

This host's kernel has no fq qdisc (CONFIG_NET_SCH_FQ off), so what runs here is the
htb mode: the program picks each packet's htb class; tests/kernel/test_egress.py proves
the fq (departure time) mode in the VM's kernel. The rate is measured by the receiver.
"""

import os
import subprocess
import sys

import pytest

from agentd.kernel import libbpf
from agentd.kernel.bpf_egress import Egress
from agentd.kernel.qdisc import HTB, Device, root_qdisc
from agentd.errors import KernelError
from tests.host.egress_support import MBIT, cgid, pair, tree  # noqa: F401 — fixtures

NETNS_TAG = "net"             # this module's network namespaces: agentd-net-<pid>-tx, -rx


def test_htb_mode_holds_an_agent_to_its_rate_and_leaves_its_neighbour_alone(cgfs, tree, pair):
    before = root_qdisc("tx0", pair.tx)
    dev = Device("tx0", netns=pair.tx)
    try:
        assert dev.mode == HTB and dev.root_kind()[0] == HTB
        with Egress(cgfs.path(tree), tree) as eg:
            a = f"{tree}/agents/a"
            for rate in (10, 50):
                classid = dev.set_class(1, rate * MBIT, 32 * 1024)
                eg.set(cgid(cgfs, a), classid=classid)
                got, free = pair.measure([cgfs.path(f"{a}/tools/t1", "cgroup.procs"),
                                          cgfs.path(f"{tree}/agents/b", "cgroup.procs")])
                assert 0.9 * rate * MBIT <= got <= 1.1 * rate * MBIT, (rate, got / MBIT)
                assert free > 2 * rate * MBIT, (rate, free / MBIT)     # agent b has no limit
                c = eg.counters(cgid(cgfs, a))
                assert c["bytes"] > 0 and c["packets"] > 0
    finally:
        dev.release()
    assert dev.root_kind() == before == ("noqueue", 0)


def test_a_tool_calls_class_sits_below_its_agents(cgfs, tree, pair):
    dev = Device("tx0", netns=pair.tx)
    try:
        with Egress(cgfs.path(tree), tree) as eg:
            a, t1 = f"{tree}/agents/a", f"{tree}/agents/a/tools/t1"
            dev.set_class(1, 40 * MBIT, 32 * 1024)                # the agent's share
            # htb queues in leaves only: the agent's own traffic gets a leaf beside its call's.
            eg.set(cgid(cgfs, a), classid=dev.set_class(3, MBIT, 32 * 1024, parent_minor=1,
                                                        ceil_bytes_per_s=40 * MBIT))
            eg.set(cgid(cgfs, t1), classid=dev.set_class(2, 10 * MBIT, 32 * 1024, parent_minor=1))
            call, main = pair.measure([cgfs.path(t1, "cgroup.procs"), cgfs.path(a, "cgroup.procs")])
            assert 0.9 * 10 * MBIT <= call <= 1.1 * 10 * MBIT, call / MBIT
            assert call + main <= 1.1 * 40 * MBIT, (call + main) / MBIT
            assert main >= 0.9 * 30 * MBIT, main / MBIT      # the rest of the agent's share
    finally:
        dev.release()


def test_a_packet_of_a_limited_call_under_a_limited_agent_is_counted_once(cgfs, tree, pair):
    """In the call's entry only (as nft mode's rules count it): the agent's entry counts its
    own processes' packets, so an agent's counters, the sum of its entries', count each
    packet once."""
    dev = Device("tx0", netns=pair.tx)
    try:
        with Egress(cgfs.path(tree), tree) as eg:
            a, t1 = f"{tree}/agents/a", f"{tree}/agents/a/tools/t1"
            dev.set_class(1, 40 * MBIT, 32 * 1024)
            eg.set(cgid(cgfs, a), classid=dev.set_class(3, MBIT, 32 * 1024, parent_minor=1,
                                                        ceil_bytes_per_s=40 * MBIT))
            eg.set(cgid(cgfs, t1), classid=dev.set_class(2, 10 * MBIT, 32 * 1024, parent_minor=1))
            (call,) = pair.measure([cgfs.path(t1, "cgroup.procs")], secs=2.0)
            assert 0.9 * 10 * MBIT <= call <= 1.1 * 10 * MBIT, call / MBIT
            mine, agents = eg.counters(cgid(cgfs, t1)), eg.counters(cgid(cgfs, a))
            # ~2 s at the call's rate (headers and the handshake on top of the payload).
            assert 1.5 * call <= mine["bytes"] <= 3 * call and mine["packets"] > 0, (mine, call)
            assert agents["bytes"] == agents["packets"] == 0, agents
            # The agent's own processes count in its entry, and not in the call's.
            (main,) = pair.measure([cgfs.path(a, "cgroup.procs")], secs=1.0)
            assert eg.counters(cgid(cgfs, a))["bytes"] >= 0.5 * main
            assert eg.counters(cgid(cgfs, t1))["bytes"] == mine["bytes"]
    finally:
        dev.release()


UDP_FLOOD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)      # SO_SNDBUFFORCE: more in flight than the queue holds
for _ in range(int(sys.argv[2])):
    try:
        s.sendto(b"x" * 1400, (sys.argv[1], 9))
    except OSError:
        pass
"""


def test_htb_class_stats_count_what_a_class_held_back_and_dropped(cgfs, tree, pair):
    dev = Device("tx0", netns=pair.tx)
    try:
        with Egress(cgfs.path(tree), tree) as eg:
            a, t1 = f"{tree}/agents/a", f"{tree}/agents/a/tools/t1"
            eg.set(cgid(cgfs, a), classid=dev.set_class(1, 10 * MBIT, 32 * 1024, leaf=True))
            eg.set(cgid(cgfs, t1), classid=dev.set_class(2, MBIT, 32 * 1024, leaf=True))
            assert dev.class_stats() == {1: {"drops": 0, "overlimits": 0}, 2: {"drops": 0, "overlimits": 0}}
            # TCP at 10 Mbit/s: held back (overlimits), not dropped (its small-queue limit).
            pair.measure([cgfs.path(a, "cgroup.procs")], secs=1.0)
            st = dev.class_stats()
            assert st[1]["overlimits"] > 0 and st[1]["drops"] == 0, st
            assert st[2] == {"drops": 0, "overlimits": 0}, st
            # A UDP flood into the 1 Mbit/s class: its queue fills and drops.
            subprocess.run(["sh", "-c", f'echo $$ > "{cgfs.path(t1, "cgroup.procs")}" && exec ip netns exec '
                            f'{pair.tx} "$0" -S -c "$1" {pair.RX_IP} 5000', sys.executable, UDP_FLOOD],
                           check=True, timeout=60)
            st = dev.class_stats()
            assert st[2]["drops"] > 0 and st[2]["overlimits"] > 0, st
            assert eg.counters(cgid(cgfs, t1))["packets"] >= 5000 - st[2]["drops"]
    finally:
        dev.release()
    assert dev.class_stats() == {}


def test_the_link_goes_with_the_loader_and_a_foreign_qdisc_is_refused(cgfs, tree, pair):
    fd = os.open(cgfs.path(tree), os.O_RDONLY | os.O_DIRECTORY)
    try:
        eg = Egress(cgfs.path(tree), tree)
        assert libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_INET_EGRESS) == [eg.prog_id]
        eg.close()                                    # the daemon stops or dies
        assert libbpf.cgroup_prog_ids(fd, libbpf.BPF_CGROUP_INET_EGRESS) == []
    finally:
        os.close(fd)
    # A qdisc someone set up is theirs: agentd refuses the device and changes nothing.
    pair_tc = ["ip", "netns", "exec", pair.tx, "tc", "qdisc", "add", "dev", "tx0", "root", "handle", "7:", "htb"]
    import subprocess
    subprocess.run(pair_tc, check=True)
    with pytest.raises(KernelError, match="did not set"):
        Device("tx0", netns=pair.tx)
    out = subprocess.run(["ip", "netns", "exec", pair.tx, "tc", "qdisc", "show", "dev", "tx0"],
                         capture_output=True, text=True, check=True).stdout
    assert "htb 7:" in out
    with pytest.raises(KernelError, match="does not exist"):
        Device("nosuch0", netns=pair.tx)
