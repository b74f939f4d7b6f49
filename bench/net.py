"""An interactive agent's request latency while a LOW agent uploads: no control vs agentd.

    sudo python3 bench/net.py [--seconds 8] [--link 100Mbit] [--low 20Mbit]

The host's egress path is made a bottleneck, as a NIC or an uplink is: the agents send
from this network namespace through a router namespace whose link to the server
namespace is shaped to `--link` by tbf with a deep buffer (400 ms, as many home and cloud
uplinks queue). In the server namespace a sink takes a bulk upload and a small server
answers 200-byte requests with 1 KiB.

Two runs, side by side in one invocation:
- none:   both agents as plain processes;
- agentd: a private daemon whose policy names the first device, both agents under
          `agentd run`; the LOW agent's class has `network.egress: --low`.
The interactive agent sends a request every 20 ms over one connection while the LOW
agent uploads; latency is from send to the last byte of the answer. Prints a table with
p50/p99 and the ratios; removes every namespace, device and cgroup it made.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import DaemonProc, agentd_cmd  # noqa: E402
from tests.net_support import SEND  # noqa: E402

SINK = r"""
import socket, sys, threading, time
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", int(sys.argv[1]))); ls.listen(8)
print("ready", flush=True)
def drain(c):
    n, t0 = 0, time.monotonic()
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    print(n / max(time.monotonic() - t0, 1e-9), flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

ANSWER = r"""
import socket, sys, threading
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", int(sys.argv[1]))); ls.listen(8)
print("ready", flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        b = c.recv(4096)
        if not b:
            return
        buf += b
        while len(buf) >= 200:
            buf = buf[200:]
            c.sendall(b"a" * 1024)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Requests every 20 ms for argv[3] s; prints the latencies (ms) as JSON.
ASK = r"""
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
end = time.monotonic() + float(sys.argv[3]); out = []
while time.monotonic() < end:
    t = time.monotonic()
    s.sendall(b"q" * 200)
    got = 0
    while got < 1024:
        got += len(s.recv(4096))
    out.append((time.monotonic() - t) * 1000)
    time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
print(json.dumps(out))
"""

POLICY = """\
version: 1
network: {{devices: [{dev}]}}
agent_classes:
  normal: {{priority: 50}}
  low: {{priority: 20, network: {{egress: {low}}}}}
detection:
  enabled: false
"""


def sh(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


class Topology:
    """root ns --dev--> router ns --(tbf link)--> server ns."""

    def __init__(self, tag, link):
        self.dev, self.r, self.s = f"bn{tag}", f"agentd-bn{tag}-r", f"agentd-bn{tag}-s"
        self.server_ip = "10.79.2.2"
        sh("ip", "netns", "add", self.r)
        sh("ip", "netns", "add", self.s)
        try:
            sh("ip", "link", "add", self.dev, "type", "veth", "peer", "name", "in0", "netns", self.r)
            sh("ip", "-n", self.r, "link", "add", "out0", "type", "veth", "peer", "name", "in0", "netns", self.s)
            sh("ip", "addr", "add", "10.79.1.1/24", "dev", self.dev)
            sh("ip", "-n", self.r, "addr", "add", "10.79.1.2/24", "dev", "in0")
            sh("ip", "-n", self.r, "addr", "add", "10.79.2.1/24", "dev", "out0")
            sh("ip", "-n", self.s, "addr", "add", f"{self.server_ip}/24", "dev", "in0")
            sh("ip", "link", "set", self.dev, "up")
            for ns, devs in ((self.r, ("lo", "in0", "out0")), (self.s, ("lo", "in0"))):
                for d in devs:
                    sh("ip", "-n", ns, "link", "set", d, "up")
            sh("ip", "route", "add", "10.79.2.0/24", "via", "10.79.1.2")
            sh("ip", "-n", self.s, "route", "add", "default", "via", "10.79.2.1")
            sh("ip", "netns", "exec", self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # The bottleneck: the uplink, with a deep buffer.
            sh("ip", "netns", "exec", self.r, "tc", "qdisc", "add", "dev", "out0", "root", "tbf", "rate", link,
               "burst", "32kbit", "latency", "400ms")
        except BaseException:
            self.close()
            raise

    def server(self, code, port):
        p = subprocess.Popen(["ip", "netns", "exec", self.s, sys.executable, "-S", "-c", code, str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        return p

    def close(self):
        sh("ip", "link", "del", self.dev, check=False)
        sh("ip", "netns", "del", self.r, check=False)
        sh("ip", "netns", "del", self.s, check=False)


def run_pair(topo, sink, secs, wrap_low, wrap_ask, env=None):
    """Upload from the LOW agent while the interactive one asks; (latencies ms, upload bytes/s)."""
    low = subprocess.Popen(wrap_low + [sys.executable, "-S", "-c", SEND, topo.server_ip, "7001", str(secs + 1)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    time.sleep(1.0)                  # the upload fills the queue first
    ask = subprocess.run(wrap_ask + [sys.executable, "-S", "-c", ASK, topo.server_ip, "7002", str(secs - 1)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=secs + 120)
    _, err = low.communicate(timeout=secs + 120)
    if ask.returncode or low.returncode:
        raise RuntimeError(f"agents failed: {ask.stderr[-500:]} {err[-500:]}")
    upload = float(sink.stdout.readline()) if wrap_low != ["true"] else 0.0
    return json.loads(ask.stdout.strip().splitlines()[-1]), upload


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--link", default="100Mbit")
    ap.add_argument("--low", default="20Mbit")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/net.py needs root (network namespaces, a daemon)")
    topo = Topology(os.getpid() % 10000, a.link)
    sink = ans = None
    results = {}
    try:
        sink, ans = topo.server(SINK, 7001), topo.server(ANSWER, 7002)
        # Idle: what a request costs with nothing else on the link.
        results["idle"] = run_pair(topo, sink, 3.0, ["true"], [])
        results["none"] = run_pair(topo, sink, a.seconds, [], [])
        with tempfile.TemporaryDirectory(prefix="agentd-bench-net-") as tmp:
            pol = Path(tmp) / "policy.yaml"
            pol.write_text(POLICY.format(dev=topo.dev, low=a.low))
            d = DaemonProc(tmp, f"agentd-bench-net-{os.getpid()}", policy=str(pol))
            d.start()
            try:
                run = agentd_cmd() + ["run"]
                results["agentd"] = run_pair(topo, sink, a.seconds, run + ["--class", "low", "--"],
                                             run + ["--"], env=d.env)
            finally:
                d.cleanup()
                from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
                from tests.helpers import kill_tree
                kill_tree(CgroupFS(find_cgroup2_mount()), d.root)
    finally:
        for p in (sink, ans):
            if p is not None:
                p.kill()
                p.wait()
        topo.close()
    rows = {m: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "requests": len(v), "upload_mbit_s": up * 8 / 1e6}
            for m, (v, up) in results.items()}
    print(f"uplink {a.link} (tbf, 400 ms buffer); LOW agent's class egress {a.low} under agentd; "
          f"{a.seconds:g} s of upload; a 200 B request / 1 KiB answer every 20 ms")
    print(f"{'run':<8}{'requests':>9}{'p50 ms':>10}{'p99 ms':>10}{'LOW upload Mbit/s':>19}")
    for m, r in rows.items():
        print(f"{m:<8}{r['requests']:>9}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['upload_mbit_s']:>19.1f}")
    print(f"none / agentd: p50 {rows['none']['p50_ms'] / rows['agentd']['p50_ms']:.1f}x, "
          f"p99 {rows['none']['p99_ms'] / rows['agentd']['p99_ms']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
