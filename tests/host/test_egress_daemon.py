"""Egress limits through the daemon: a policy naming a device and a tool class's rate;
`agentd tool` runs a sender that the limit holds, and the device gets its own qdisc back
when the daemon stops. Both classifiers of this host (it has no fq): the BPF program (htb
mode) and nftables rules (nft mode, whose table goes when the daemon stops)."""

import fcntl
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from agentd.kernel import nft
from agentd.kernel.qdisc import root_qdisc
from tests.helpers import REPO, DaemonProc, agentd_cmd
from tests.host.test_metrics_series import free_port
from tests.net_support import SEND, HostPair

MBIT = 125_000

POLICY = """\
version: 1
network: {{devices: [{dev}], mode: {mode}}}
tool_classes:
  normal: {{priority: 50}}
  fetch: {{priority: 50, network: {{egress: 10Mbit}}}}
detection:
  enabled: false
"""


@pytest.fixture
def pair():
    p = HostPair(f"agentd-netd-{os.getpid()}", os.getpid())
    yield p
    p.close()


@pytest.fixture
def host_nft():
    # nft mode's table is the host namespace's `inet agentd`: one such daemon at a time.
    with open("/tmp/agentd-test-nft.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def objects_but_egress(tmp_path):
    """AGENTD_BPF_DIR with every BPF object agentd ships except the egress program's."""
    from agentd.kernel.bpf_objects import OBJ_DIR
    d = tmp_path / "bpf"
    d.mkdir()
    for name in os.listdir(OBJ_DIR):
        if name != "egress.bpf.o":
            os.symlink(os.path.join(OBJ_DIR, name), d / name)
    return str(d)


@pytest.mark.parametrize("mode,runs,program", [("auto", "htb", True), ("nft", "nft", True),
                                               ("auto", "nft", False)])
def test_a_tool_classs_egress_rate_holds_its_call(tmp_path, test_root, pair, host_nft, mode, runs, program):
    before = root_qdisc(pair.dev)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(dev=pair.dev, mode=mode))
    port = free_port()
    env = None if program else {"AGENTD_BPF_DIR": objects_but_egress(tmp_path)}
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy), metrics=f"127.0.0.1:{port}", extra_env=env).start()
    try:
        if not program:
            # auto without the program: nftables stands in, with one warning that says why.
            with open(d.log_path) as f:
                warned = [ln for ln in f if "egress program cannot load" in ln]
            assert len(warned) == 1 and "fall back to nftables" in warned[0], warned
        st = d.request({"op": "status"})
        assert st["modes"].get("network") == runs, st["modes"]
        assert ("agentd" in nft.tables()) == (runs == "nft")
        assert root_qdisc(pair.dev)[0] == "htb"
        rates = []
        for cls, rport in (("fetch", 5301), ("normal", 5302)):
            recv = pair.receive(1, port=rport)
            r = subprocess.run(agentd_cmd() + ["run", "--name", f"net-{cls}", "--", *agentd_cmd(), "tool", "--class",
                                               cls, "--", sys.executable, "-S", "-c", SEND, pair.RX_IP, str(rport),
                                               "3"],
                               capture_output=True, text=True, timeout=120, env=d.env, cwd=REPO)
            assert r.returncode == 0, r.stderr
            out, err = recv.communicate(timeout=60)
            rates.append(json.loads(out.strip().splitlines()[-1])[0])
        limited, free = rates
        assert 0.9 * 10 * MBIT <= limited <= 1.1 * 10 * MBIT, limited / MBIT
        assert free > 2 * 10 * MBIT, free / MBIT          # the normal class has no rate
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert f'agentd_mode_info{{component="network",mode="{runs}"}} 1.0' in text
    finally:
        d.cleanup()
    assert root_qdisc(pair.dev) == before
    assert "agentd" not in nft.tables()
