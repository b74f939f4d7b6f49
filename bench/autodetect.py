#!/usr/bin/env python3
"""Automatic tool-call placement: correctness and added exec latency, per strategy.

An "agent" (a Python process in a main cgroup) starts tool calls the way mini-swe-agent
does (sh -c ..., new session). Each tool call immediately forks a storm of subshells;
every subshell records, as its first action, the cgroup it runs in. A process counts
as correctly placed if at that moment it already was in its tool call's cgroup.
Latency: wall time of `sh -c true` tool calls as the agent sees it, per strategy, next
to a baseline with no detector; and for `stop`, the time a task is held stopped.

    python3 bench/autodetect.py [--tools 20] [--storm 20] [--calls 200]
Needs root, cgroup v2 (any mount), and the BPF objects (make -C bpf) for bpf strategies.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount  # noqa: E402
from agentd.monitor.autodetect import AutoDetector  # noqa: E402
from agentd.monitor.events import decode_proc  # noqa: E402

AGENT = r'''
import os, subprocess, sys, time, json
main_procs, out, ntools, storm, ncalls, sleep_s, shell = sys.argv[1:8]
with open(main_procs, "w") as f:
    f.write(str(os.getpid()))
subprocess.run(["uname", "-p"], stdout=subprocess.DEVNULL)          # housekeeping
script = ('for i in $(seq %s); do ( while read l; do case $l in 0::*) c=$l;; esac; done < /proc/self/cgroup; echo "$$ $c" >> %s; sleep %s ) & done; wait'
          % (storm, out, sleep_s))
argv = [shell, "sh", "-c", script] if shell.endswith("busybox") else [shell, "-c", script]
procs = [subprocess.Popen(argv, start_new_session=True) for _ in range(int(ntools))]
for p in procs:
    p.wait()
lat = []
for _ in range(int(ncalls)):
    t = time.monotonic_ns()
    subprocess.run("true", shell=True, start_new_session=True)
    lat.append(time.monotonic_ns() - t)
print(json.dumps(lat))
'''

_seq = [0]


class Scenario:
    """A test root cgroup with main/ and tools/, a fake Controller `place`, cleanup."""

    def __init__(self, mount=None):
        self.mount = mount or find_cgroup2_mount()
        self.fs = CgroupFS(self.mount)
        _seq[0] += 1
        self.root = f"agentd-test-{os.getpid()}-{_seq[0]}"
        self.main = f"{self.root}/main"
        self.fs.makedirs(self.main)
        self.fs.makedirs(f"{self.root}/tools")
        self.placed = {}

    def place(self, agent_id, pid, argv):
        cg = f"{self.root}/tools/tc-{pid}"
        self.fs.mkdir(cg)
        self.fs.move(cg, pid)
        self.placed[pid] = cg

    def close(self):
        for cg in [self.main] + [f"{self.root}/tools/{c}" for c in self.fs.children(f"{self.root}/tools")]:
            if self.fs.exists(cg):
                self.fs.kill(cg)
                self.fs.wait_empty(cg, 5)
        self.fs.remove_tree(self.root)


def run(strategy, tools=20, storm=20, calls=100, sleep_s=0.5, poll_interval=0.01, shell="/bin/sh"):
    """Run one scenario; returns a dict of measurements. strategy: stop|sweep|poll|none."""
    sc = Scenario()
    lc = rb = None
    stop = threading.Event()
    try:
        if strategy in ("stop", "sweep", "none"):
            from agentd.kernel.bpf_lifecycle import Lifecycle
            lc = Lifecycle()
        det = None
        if strategy != "none":
            det = AutoDetector(sc.place, lambda argv, leads: leads, sc.fs, strategy=strategy,
                               lifecycle=lc if strategy != "poll" else None)
            det.add_agent("a1", sc.main)

        def loop():
            if rb is not None:
                while not stop.is_set():
                    rb.poll(20)
            else:
                while not stop.is_set():
                    if det:
                        det.reconcile()
                    time.sleep(poll_interval)

        if lc is not None and det is not None:
            rb = lc.ring_buffer(lambda d: det.handle(decode_proc(d)))
        th = threading.Thread(target=loop, daemon=True)
        th.start()
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.txt")
            open(out, "w").close()
            res = subprocess.run([sys.executable, "-c", AGENT, sc.fs.path(sc.main, "cgroup.procs"), out,
                                  str(tools), str(storm), str(calls), str(sleep_s), shell],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode:
                raise RuntimeError(res.stderr)
            import json
            lat = json.loads(res.stdout.strip().splitlines()[-1])
            lines = [ln.split(" ", 1) for ln in open(out).read().splitlines() if ln]
        stop.set()
        th.join()
        right = sum(1 for pid, cg in lines if cg.strip() == f"0::/{sc.root}/tools/tc-{pid}")
        if os.environ.get("AGENTD_BENCH_DEBUG"):
            print(strategy, lines[:3], file=sys.stderr)
        return {
            "strategy": strategy,
            "processes": len(lines),
            "right": right,
            "fraction": right / len(lines) if lines else 0.0,
            "tools_placed": len(sc.placed),
            "housekeeping": det.stats.housekeeping if det else 0,
            "errors": det.stats.errors if det else 0,
            "call_median_ms": statistics.median(lat) / 1e6 if lat else None,
            "call_p95_ms": sorted(lat)[max(int(len(lat) * 0.95) - 1, 0)] / 1e6 if lat else None,
            "hold_median_us": statistics.median(det.stats.hold_ns) / 1e3 if det and det.stats.hold_ns else None,
            "lost": lc.stats()["lost"] if lc else 0,
        }
    finally:
        stop.set()
        if rb:
            rb.close()
        if lc:
            lc.close()
        sc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", type=int, default=20)
    ap.add_argument("--storm", type=int, default=20)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--strategies", default="none,stop,sweep,poll")
    ap.add_argument("--shell", default="/bin/sh", help="tool-call shell (busybox sh starts faster: a harder race)")
    a = ap.parse_args()
    rows = [run(s, a.tools, a.storm, a.calls, shell=a.shell) for s in a.strategies.split(",")]
    print(f"tools={a.tools} storm={a.storm} calls={a.calls} shell={a.shell}")
    base = next((r["call_median_ms"] for r in rows if r["strategy"] == "none"), None)
    print(f"{'strategy':8} {'procs':>6} {'right':>6} {'frac':>7} {'placed':>6} {'hk':>3} {'err':>3} "
          f"{'call_med_ms':>11} {'call_p95_ms':>11} {'vs_none':>8} {'hold_med_us':>11} {'lost':>4}")
    for r in rows:
        ratio = f"{r['call_median_ms'] / base:.3f}" if base else "-"
        hold = f"{r['hold_median_us']:.0f}" if r["hold_median_us"] is not None else "-"
        print(f"{r['strategy']:8} {r['processes']:6d} {r['right']:6d} {r['fraction']:7.1%} {r['tools_placed']:6d} "
              f"{r['housekeeping']:3d} {r['errors']:3d} {r['call_median_ms']:11.2f} {r['call_p95_ms']:11.2f} "
              f"{ratio:>8} {hold:>11} {r['lost']:4d}")


if __name__ == "__main__":
    main()
