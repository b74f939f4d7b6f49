#!/usr/bin/env python3
"""fork+exec cost with and without agentd's BPF programs attached, as ratios.

A small C loop (compiled here with gcc) forks, execs /bin/true and waits, N times, and
prints ns per iteration. Conditions run interleaved, in shuffled order, for several rounds
on the same machine, so drift hits all of them alike; the table shows medians and the
ratio to the no-programs baseline.

  unwatched   programs attached, the loop's cgroup not watched (every other process
              on the host pays this)
  watched     the loop runs in a watched cgroup: every fork/exec/exit is reported to a
              ring buffer that a thread drains; memwatch tracks the cgroup's rss
  batch       the reader is woken only when 64 KiB of events wait (or a task is stopped
              at exec) and drains on a timer otherwise: saves one wake-up IPI per event

    python3 bench/forkexec.py [--iters 2000] [--rounds 7]
Needs root, cgroup v2 and the BPF objects (make -C bpf). Target: <= 1.03.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentd.kernel import bpf_types as T  # noqa: E402
from agentd.kernel import libbpf  # noqa: E402
from agentd.kernel.bpf_lifecycle import Lifecycle  # noqa: E402
from agentd.kernel.bpf_memwatch import MemWatch  # noqa: E402
from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount  # noqa: E402

LOOP_C = r'''
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/resource.h>
static double cpu_ns(void) {
    struct rusage s, c;
    getrusage(RUSAGE_SELF, &s);
    getrusage(RUSAGE_CHILDREN, &c);
    return ((s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec + c.ru_stime.tv_sec) * 1e9 +
            (s.ru_utime.tv_usec + s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec) * 1e3);
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    char *args[] = {"/bin/true", NULL}, *env[] = {NULL};
    struct timespec a, b;
    double c0 = cpu_ns();
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { execve(args[0], args, env); _exit(127); }
        int st; waitpid(p, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) { fprintf(stderr, "child failed\n"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f %.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n, (cpu_ns() - c0) / n);
    return 0;
}
'''

CONDITIONS = ("baseline", "lifecycle unwatched", "lifecycle watched", "lifecycle watched batch",
              "memwatch unwatched", "memwatch watched", "both watched batch")
BATCH_BYTES = 65536     # what EventMonitor uses


def build(tmp):
    src, exe = os.path.join(tmp, "loop.c"), os.path.join(tmp, "loop")
    with open(src, "w") as f:
        f.write(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def measure(exe, iters, fs, cg):
    procs = fs.path(cg, "cgroup.procs")

    def enter():
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
    out = subprocess.run([exe, str(iters)], preexec_fn=enter, capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def run_condition(cond, exe, iters, fs, cg, prog_stats=None):
    cid = fs.cgroup_id(cg)
    progs, rbs = [], []
    stop = threading.Event()
    try:
        if "lifecycle" in cond or "both" in cond:
            lc = Lifecycle(batch_bytes=BATCH_BYTES if "batch" in cond else 0)
            progs.append(lc)
            if "watched" in cond and "unwatched" not in cond:
                lc.watch(cid, T.AGENTD_WATCH_TREE)
            rbs.append(lc.ring_buffer(lambda d: None))
        if "memwatch" in cond or "both" in cond:
            mw = MemWatch()
            progs.append(mw)
            if "watched" in cond and "unwatched" not in cond:
                mw.set_limit(cid, threshold_bytes=1 << 40, rate_bytes_per_s=1 << 40)
            rbs.append(mw.ring_buffer(lambda d: None))
        threads = [threading.Thread(target=lambda rb=rb: [rb.poll(20) for _ in iter(stop.is_set, True)])
                   for rb in rbs]
        for t in threads:
            t.start()
        result = measure(exe, iters, fs, cg)
        if prog_stats is not None:
            for p in progs:
                for name, (cnt, ns) in p._obj.prog_stats().items():
                    prog_stats[name] = (cnt, ns)
        stop.set()
        for t in threads:
            t.join()
        return result
    finally:
        stop.set()
        for rb in rbs:
            rb.close()
        for p in progs:
            p.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    fs = CgroupFS(find_cgroup2_mount())
    cg = f"agentd-bench-{os.getpid()}"
    fs.mkdir(cg)
    results = {c: [] for c in CONDITIONS}
    stats = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exe = build(tmp)
            measure(exe, a.iters // 4, fs, cg)            # warm caches
            for _ in range(a.rounds):
                order = list(CONDITIONS)
                random.shuffle(order)
                for c in order:
                    results[c].append(run_condition(c, exe, a.iters, fs, cg))
            # Exact program cost, independent of machine noise: the kernel's run-time accounting.
            fd = libbpf.enable_stats()
            try:
                for c in CONDITIONS[1:]:
                    stats[c] = {}
                    run_condition(c, exe, a.iters, fs, cg, prog_stats=stats[c])
            finally:
                os.close(fd)
    finally:
        fs.rmdir(cg)
    wall = {c: [w for w, _ in v] for c, v in results.items()}
    cpu = {c: [u for _, u in v] for c, v in results.items()}
    bw, bc = statistics.median(wall["baseline"]), statistics.median(cpu["baseline"])
    print(f"fork+exec+wait of /bin/true, {a.iters} iterations x {a.rounds} rounds (interleaved), "
          f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}")
    print("wall: elapsed per iteration; cpu: user+sys of the loop and its children per iteration "
          "(where BPF program time is charged; less sensitive to other load)")
    print(f"{'condition':24} {'wall_med_us':>11} {'wall_ratio':>10} {'cpu_med_us':>10} {'cpu_ratio':>9} "
          f"{'cpu_min_us':>10}")
    for c in CONDITIONS:
        print(f"{c:24} {statistics.median(wall[c]) / 1e3:11.1f} {statistics.median(wall[c]) / bw:10.3f} "
              f"{statistics.median(cpu[c]) / 1e3:10.1f} {statistics.median(cpu[c]) / bc:9.3f} "
              f"{min(cpu[c]) / 1e3:10.1f}")
    print()
    print("BPF program time per fork+exec iteration, from the kernel's run-time stats (an upper bound:")
    print("runs of other processes on the host during the pass are included); of_cpu = share of the")
    print("baseline cpu time per iteration")
    print(f"{'condition':24} {'program':16} {'runs/iter':>9} {'ns/run':>7} {'ns/iter':>8} {'of_cpu':>7}")
    for c in CONDITIONS[1:]:
        total = 0.0
        for name, (cnt, ns) in sorted(stats[c].items()):
            per_iter = ns / a.iters
            total += per_iter
            print(f"{c:24} {name:16} {cnt / a.iters:9.1f} {ns / max(cnt, 1):7.0f} {per_iter:8.0f} "
                  f"{per_iter / bc:7.2%}")
        print(f"{c:24} {'total':16} {'':9} {'':7} {total:8.0f} {total / bc:7.2%}")


if __name__ == "__main__":
    main()
