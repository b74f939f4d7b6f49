"""agentd/kernel/nft.py's numbers must be the kernel's (the uapi headers, compiled by gcc),
and its extension of pyroute2's `socket` expression must put the level where the kernel
reads it. tests/host/test_egress_nft.py shows the kernel taking the rules."""

import os
import shutil
import struct
import subprocess

import pytest

from agentd.kernel import nft

NAMES = {
    "NFPROTO_INET": nft.NFPROTO_INET, "NF_INET_LOCAL_OUT": nft.NF_INET_LOCAL_OUT,
    "NFNL_MSG_BATCH_BEGIN": nft.NFNL_MSG_BATCH_BEGIN, "NFNL_MSG_BATCH_END": nft.NFNL_MSG_BATCH_END,
    "NFT_TABLE_F_OWNER": nft.NFT_TABLE_F_OWNER, "NFT_SOCKET_CGROUPV2": nft.NFT_SOCKET_CGROUPV2,
    "NFTA_SOCKET_LEVEL": 3, "NFT_META_PRIORITY": nft.NFT_META_PRIORITY, "NFT_META_OIFNAME": nft.NFT_META_OIFNAME,
    "NFT_REG_1": nft.NFT_REG_1, "NFT_REG_VERDICT": nft.NFT_REG_VERDICT, "NFT_CMP_EQ": nft.NFT_CMP_EQ,
    "NFT_JUMP": nft.NFT_JUMP, "NFT_RETURN": nft.NFT_RETURN, "NF_ACCEPT": nft.NF_ACCEPT,
    "NF_IP_PRI_MANGLE": nft.HOOK_PRIORITY, "IFNAMSIZ": nft.IFNAMSIZ,
}


def test_the_constants_are_the_kernels(tmp_path):
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to check the nftables constants against the uapi headers")
    src = tmp_path / "c.c"
    headers = ("stdio.h", "net/if.h", "linux/netfilter.h", "linux/netfilter_ipv4.h", "linux/netlink.h",
               "linux/netfilter/nfnetlink.h", "linux/netfilter/nf_tables.h")
    src.write_text("".join(f"#include <{h}>\n" for h in headers) + "int main(void) {\n"
                   + "".join(f'printf("{n} %d\\n", (int)({n}));\n' for n in NAMES) + "return 0; }\n")
    exe = tmp_path / "c"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                        check=True).stdout.splitlines())
    assert {k: int(v) for k, v in got.items()} == NAMES


def _attrs(data):
    """(type, payload) of the netlink attributes in `data`."""
    out, off = [], 0
    while off + 4 <= len(data):
        length, typ = struct.unpack_from("=HH", data, off)
        out.append((typ & 0x3FFF, data[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


def test_a_class_rule_encodes_the_socket_level_and_the_ids_as_the_kernel_reads_them():
    P, rule_msg, _ = nft._messages()
    m = rule_msg()
    m["attrs"] = [("NFTA_RULE_TABLE", "agentd"), ("NFTA_RULE_CHAIN", "classes"),
                  ("NFTA_RULE_EXPRESSIONS", nft.class_rule(0x1122334455, 7, 0xA9E00005))]
    m.encode()
    rule = dict(_attrs(bytes(m.data[16 + 4:])))              # past nlmsghdr and nfgenmsg
    exprs = [dict(_attrs(e)) for _, e in _attrs(rule[4])]     # NFTA_RULE_EXPRESSIONS = 4
    names = [e[1].rstrip(b"\0").decode() for e in exprs]      # NFTA_EXPR_NAME = 1
    assert names == ["socket", "cmp", "counter", "immediate", "meta", "immediate"]
    sock = dict(_attrs(exprs[0][2]))                          # NFTA_EXPR_DATA = 2
    # NFTA_SOCKET_KEY 1, _DREG 2, _LEVEL 3, each a big-endian u32.
    assert {k: struct.unpack(">I", v)[0] for k, v in sock.items()} == {1: 3, 2: 1, 3: 7}
    cmp_data = dict(_attrs(dict(_attrs(exprs[1][2]))[3]))     # NFTA_CMP_DATA -> NFTA_DATA_VALUE
    assert cmp_data[1] == struct.pack("=Q", 0x1122334455)    # the kernel memcpy's the u64 id
    prio = dict(_attrs(dict(_attrs(exprs[3][2]))[2]))         # NFTA_IMMEDIATE_DATA -> value
    assert prio[1] == struct.pack("=I", 0xA9E00005)


def test_bad_levels_and_names_are_refused_before_the_kernel_sees_them():
    from agentd.errors import KernelError
    with pytest.raises(KernelError, match="outside 0..255"):
        nft.class_rule(1, 256, 0)
    with pytest.raises(KernelError, match="not a network interface name"):
        nft.device_rule("x" * 16)
