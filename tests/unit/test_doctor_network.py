"""`agentd doctor` says which egress mode the daemon would run, and why."""

import types

import pytest

from agentd import doctor
from agentd.kernel import nft, qdisc


@pytest.fixture
def policy(tmp_path):
    n = iter(range(100))

    def write(text):
        p = tmp_path / f"p{next(n)}.yaml"
        p.write_text("version: 1\n" + text)
        return str(p)
    return write


def mode(path, fq=True, htb=True, bpf=True, nft_err=None, monkeypatch=None):
    monkeypatch.setattr(qdisc, "kernel_has_qdisc", lambda kind, **kw: {"fq": fq, "htb": htb}[kind])
    monkeypatch.setattr(nft, "probe", lambda netns=None: nft_err)
    return doctor._network_mode(path, types.SimpleNamespace(bpf_permitted=bpf))


def test_network_modes_and_their_reasons(policy, monkeypatch):
    none = policy("")
    named = policy("network: {devices: [eth0]}\n")
    forced_fq = policy("network: {devices: [eth0], mode: fq}\n")
    assert mode(none, monkeypatch=monkeypatch)["mode"] == "off"
    assert "names no device" in mode(none, monkeypatch=monkeypatch)["reason"]
    assert mode(named, monkeypatch=monkeypatch) == {"mode": "fq", "reason": "departure times per packet, fq on eth0"}
    m = mode(named, fq=False, monkeypatch=monkeypatch)
    assert m["mode"] == "htb" and "no fq qdisc" in m["reason"]
    m = mode(forced_fq, fq=False, monkeypatch=monkeypatch)
    assert m["mode"] == "off" and "CONFIG_NET_SCH_FQ" in m["reason"]
    # Without BPF, nftables rules pick the htb classes where the kernel takes them.
    m = mode(named, bpf=False, monkeypatch=monkeypatch)
    assert m["mode"] == "nft" and "may not load BPF" in m["reason"] and "socket cgroupv2" in m["reason"]
    m = mode(named, bpf=False, nft_err="nftables: ... (errno 95)", monkeypatch=monkeypatch)
    assert m["mode"] == "off" and "BPF" in m["reason"] and "errno 95" in m["reason"]
    m = mode(forced_fq, bpf=False, monkeypatch=monkeypatch)
    assert m["mode"] == "off" and "policy asks fq, which needs BPF" in m["reason"]
    m = mode(policy("network: {devices: [eth0], mode: nft}\n"), monkeypatch=monkeypatch)
    assert m["mode"] == "nft" and m["reason"].startswith("policy asks nft")

