"""The bench both host egress tiers share (test_egress.py: the BPF classifier; test_egress_nft.py:
the nftables one): a veth pair between two network namespaces with its receiver
(tests/net_support.py), and a test tree with two agents and a tool call to send from.

Imported by name into a test module: `pair` and `tree` are its fixtures there."""

import os

import pytest

from tests.net_support import NetPair

MBIT = 1_000_000 // 8          # bytes/s


@pytest.fixture
def pair(request):
    # One pair per test, named after the test module so two modules' leftovers never meet.
    p = NetPair(f"agentd-{request.module.NETNS_TAG}-{os.getpid()}")
    yield p
    p.close()


@pytest.fixture
def tree(cgfs, test_root):
    """test_root/agents/{a,b}, with a's tool call a/tools/t1."""
    for cg in (test_root, f"{test_root}/agents", f"{test_root}/agents/a", f"{test_root}/agents/b",
               f"{test_root}/agents/a/tools", f"{test_root}/agents/a/tools/t1"):
        cgfs.mkdir(cg)
    return test_root


def cgid(cgfs, cg):
    return os.stat(cgfs.path(cg)).st_ino
