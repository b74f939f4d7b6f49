"""Two network namespaces joined by a veth pair, and TCP senders placed in cgroups: the
test bench for egress limits (tests/host/test_egress.py, tests/kernel/test_egress.py).

The sender side's device is the one agentd shapes; a receiver in the other namespace
counts what arrives per connection, so the rate is measured where the packets land, after
every queue.
"""

import json
import os
import subprocess
import sys
import time

SEND = r"""
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
buf = b"x" * 65536
end = time.monotonic() + secs
while time.monotonic() < end:
    s.sendall(buf)
s.close()
"""

# Accepts `n` connections; for each, the bytes that arrived after its first `skip` seconds
# over the time they took (the start's burst and slow start left out). Prints JSON.
RECV = r"""
import json, socket, sys, threading, time
port, n, skip = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(n)
print("ready", flush=True)
out = {}
def serve(c, peer):
    t0 = None; got = 0; first = None
    while True:
        b = c.recv(1 << 20)
        now = time.monotonic()
        if not b:
            break
        if t0 is None:
            t0 = now
        if now - t0 >= skip:
            if first is None:
                first = now
            got += len(b)
            last = now
    out[peer[1]] = got / (last - first) if first is not None and last > first else 0.0
ts = []
for _ in range(n):
    c, peer = ls.accept()
    t = threading.Thread(target=serve, args=(c, peer)); t.start(); ts.append(t)
for t in ts:
    t.join()
print(json.dumps(sorted(out.values())), flush=True)
"""


def run(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


class HostPair:
    """A veth pair with its sending end `dev` in the host's own network namespace (where a
    daemon under test runs) and the other end in namespace `<tag>-rx`. Its own /24
    (10.78.<n>.0) so that parallel tests do not meet. close() removes the namespace and so
    both ends."""

    def __init__(self, tag, n):
        n = n % 250 + 1
        self.dev, self.peer, self.rx = f"agtx{n}", f"agrx{n}", f"{tag}-rx"
        self.TX_IP, self.RX_IP = f"10.78.{n}.1", f"10.78.{n}.2"
        run("ip", "netns", "add", self.rx)
        try:
            run("ip", "link", "add", self.dev, "type", "veth", "peer", "name", self.peer, "netns", self.rx)
            run("ip", "addr", "add", f"{self.TX_IP}/24", "dev", self.dev)
            run("ip", "-n", self.rx, "addr", "add", f"{self.RX_IP}/24", "dev", self.peer)
            run("ip", "link", "set", self.dev, "up")
            for dev in (self.peer, "lo"):
                run("ip", "-n", self.rx, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    receive = None                # set below: the same receiver as NetPair's

    def close(self):
        run("ip", "link", "del", self.dev, check=False)
        run("ip", "netns", "del", self.rx, check=False)


class NetPair:
    """Namespaces `<tag>-tx` and `<tag>-rx`; device `tx0` (10.77.0.1) in the first, `rx0`
    (10.77.0.2) in the second. close() removes both namespaces (and so the pair)."""

    TX_IP, RX_IP = "10.77.0.1", "10.77.0.2"

    def __init__(self, tag):
        self.tx, self.rx = f"{tag}-tx", f"{tag}-rx"
        run("ip", "netns", "add", self.tx)
        try:
            run("ip", "netns", "add", self.rx)
            run("ip", "-n", self.tx, "link", "add", "tx0", "type", "veth", "peer", "name", "rx0", "netns", self.rx)
            run("ip", "-n", self.tx, "addr", "add", f"{self.TX_IP}/24", "dev", "tx0")
            run("ip", "-n", self.rx, "addr", "add", f"{self.RX_IP}/24", "dev", "rx0")
            for ns, dev in ((self.tx, "tx0"), (self.rx, "rx0"), (self.tx, "lo"), (self.rx, "lo")):
                run("ip", "-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def receive(self, n, port=5201, skip=0.5):
        """Start a receiver for `n` connections; returns its Popen (stdout: 'ready', JSON)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.rx, sys.executable, "-S", "-c", RECV, str(port), str(n),
                              str(skip)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        return p

    def send(self, procs_file, secs, port=5201):
        """A sender in the cgroup whose cgroup.procs is `procs_file` (None: where the test
        runs), in the tx namespace, for `secs` seconds. It joins the cgroup before it opens
        its socket: a socket belongs to the cgroup of the task that made it."""
        join = f'echo $$ > "{procs_file}" && ' if procs_file else ""
        return subprocess.Popen(["sh", "-c", f'{join}exec ip netns exec {self.tx} "$0" -S -c "$1" "$2" "$3" "$4"',
                                 sys.executable, SEND, self.RX_IP, str(port), str(secs)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def measure(self, procs_files, secs=3.0, port=5201):
        """Bytes/s each sender got across, in the order of `procs_files` (one sender each,
        side by side, each to a receiver of its own)."""
        recvs = [self.receive(1, port=port + i) for i in range(len(procs_files))]
        senders = [self.send(pf, secs, port=port + i) for i, pf in enumerate(procs_files)]
        for s in senders:
            _, err = s.communicate(timeout=secs + 60)
            assert s.returncode == 0, err
        rates = []
        for r in recvs:
            out, err = r.communicate(timeout=60)
            assert r.returncode == 0, err
            rates.append(json.loads(out.strip().splitlines()[-1])[0])
        return rates

    def close(self):
        for ns in (self.tx, self.rx):
            run("ip", "netns", "del", ns, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/run/netns/{ns}") for ns in (self.tx, self.rx)):
            time.sleep(0.05)


HostPair.receive = NetPair.receive
