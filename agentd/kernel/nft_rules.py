"""The egress classes' nftables ruleset: its shape, the kernel's numbers it is built from,
and the pure builders of its rules' expressions (pyroute2's attribute form). The netlink
adapter that installs it is nft.py.

The rates live in htb classes (agentd/kernel/qdisc.py) as in the BPF program's htb mode;
what differs is who picks a packet's class. Here one table, `inet agentd`, holds

    chain egress  { type filter hook output priority -150; policy accept;
                    meta oifname "eth0" jump classes    # one rule per device agentd shapes
    }
    chain classes { socket cgroupv2 level 3 <id of the tool call> counter meta priority set a9e0:5 return
                    socket cgroupv2 level 2 <id of the agent>     counter meta priority set a9e0:2 return
    }

`socket cgroupv2 level L` takes the sending socket's cgroup's ancestor at level L and
compares its 64-bit id (the cgroup directory's inode number), so one rule covers an agent
and everything below it. Deeper cgroups come first: a tool call's rule decides before its
agent's, and `return` ends the walk, so each packet is counted once, by the rule of its
deepest limited cgroup (the per-agent bytes and packets in the metrics). htb takes
skb->priority as the class when it names one of its own classes. Only packets leaving by
the devices the policy names are marked (`meta oifname`), so no other device's queueing
sees a changed priority.
"""

import struct

from ..errors import KernelError

TABLE = "agentd"
BASE_CHAIN = "egress"
CLASS_CHAIN = "classes"
HOOK_PRIORITY = -150           # NF_IP_PRI_MANGLE: where packet metadata is set, before filtering

# include/uapi/linux/netfilter.h, nf_tables.h, nfnetlink.h
NFPROTO_INET = 1
NF_INET_LOCAL_OUT = 3
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_TABLE_F_OWNER = 0x2
NFT_SOCKET_CGROUPV2 = 3
NFT_META_PRIORITY, NFT_META_OIFNAME = 2, 7
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFT_CMP_EQ = 0
NF_ACCEPT, NFT_JUMP, NFT_RETURN = 1, -3, -5
IFNAMSIZ = 16
MAX_LEVEL = 255                # the kernel's bound on NFTA_SOCKET_LEVEL

COMMENT = "agentd cgroup {}"   # each class rule's comment: which cgroup id it stands for


def _expr(name, **attrs):
    data = [(f"NFTA_{name.upper()}_{k.upper()}", v) for k, v in attrs.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": data})]}


def _value(b):
    return {"attrs": [("NFTA_DATA_VALUE", b)]}


def _verdict(code, chain=None):
    v = [("NFTA_VERDICT_CODE", code)] + ([("NFTA_VERDICT_CHAIN", chain)] if chain else [])
    return _expr("immediate", dreg=NFT_REG_VERDICT, data={"attrs": [("NFTA_DATA_VERDICT", {"attrs": v})]})


def device_rule(ifname):
    """`meta oifname IFNAME jump classes`: the kernel copies the name NUL-padded to IFNAMSIZ."""
    name = ifname.encode()
    if not 0 < len(name) < IFNAMSIZ:
        raise KernelError(f"{ifname!r} is not a network interface name")
    return [_expr("meta", dreg=NFT_REG_1, key=NFT_META_OIFNAME),
            _expr("cmp", sreg=NFT_REG_1, op=NFT_CMP_EQ, data=_value(name.ljust(IFNAMSIZ, b"\0"))),
            _verdict(NFT_JUMP, CLASS_CHAIN)]


def class_rule(cgroup_id, level, classid):
    """`socket cgroupv2 level L == id counter meta priority set classid return`. The id
    and the priority are compared and stored in host byte order (the kernel memcpy's the
    u64 id into the register; skb->priority is a u32)."""
    if not 0 <= int(level) <= MAX_LEVEL:
        raise KernelError(f"cgroup level {level} is outside 0..{MAX_LEVEL} (the kernel's bound for nftables)")
    return [_expr("socket", key=NFT_SOCKET_CGROUPV2, dreg=NFT_REG_1, level=int(level)),
            _expr("cmp", sreg=NFT_REG_1, op=NFT_CMP_EQ, data=_value(struct.pack("=Q", int(cgroup_id)))),
            _expr("counter", bytes=0, packets=0),
            _expr("immediate", dreg=NFT_REG_1, data=_value(struct.pack("=I", int(classid)))),
            _expr("meta", key=NFT_META_PRIORITY, sreg=NFT_REG_1),
            _verdict(NFT_RETURN)]
