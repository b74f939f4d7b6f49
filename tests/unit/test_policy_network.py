"""The policy's network keys: rates with units, interface names, the mode."""

import pytest

from agentd.errors import AgentdError
from agentd.policy import load_policy_text


def load(text):
    return load_policy_text("version: 1\n" + text, host_memory_bytes=8 << 30)


def test_network_limits_per_agent_and_tool_class():
    p = load("network: {devices: [eth0, ens3]}\n"
             "agent_classes:\n  normal: {network: {egress: 100Mbit}}\n"
             "tool_classes:\n  normal: {}\n  batch: {network: {egress: 20Mbit, burst: 64Ki}}\n")
    assert p.network.devices == ["eth0", "ens3"] and p.network.mode == "auto"
    assert p.agent_classes["normal"].network.egress == 12_500_000
    assert p.tool_classes["batch"].network.egress == 2_500_000
    assert p.tool_classes["batch"].network.burst == 65536
    assert p.tool_classes["normal"].network.egress is None      # no limit unless written
    assert load("network: {devices: [eth0], mode: nft}\n").network.mode == "nft"


@pytest.mark.parametrize("text, words", [
    ("network: {devices: [eth0/1]}", "line 2.*network.devices\\[0\\].*not a network interface name"),
    ("network: {devices: [averyveryverylongname]}", "not a network interface name"),
    ("tool_classes: {normal: {network: {egress: 20}}}", "needs a unit.*20Mbit"),
    ("tool_classes: {normal: {network: {egress: fast}}}", "cannot parse rate 'fast'"),
    ("network: {mode: tc}", "network.mode"),
])
def test_bad_network_keys_name_the_line_and_the_fix(text, words):
    with pytest.raises(AgentdError, match=words.replace("line 2", "<policy>:2")):
        load(text)
