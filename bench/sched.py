#!/usr/bin/env python3
"""CPU scheduling benchmark: fairness across agents and interactive wake-up latency, under
(a) the kernel's default scheduler, (b) agentd's cpu.weight fallback and (c) agentd's
sched_ext scheduler, all three in one boot of the kernel-tier VM (Debian's sched_ext kernel),
once per vCPU count.

    python3 bench/sched.py [--cpus 1,2,2@host] [--seconds S] [--lat-seconds S] [--json]
        [--interactive-slice-us US]        override the policy's interactive slice in (c)
        [--host-clock]                     host clock for every guest (see below)
    python3 bench/sched.py --table JSON    print the table of a saved --json result
    python3 bench/sched.py --guest OUTDIR  inside the VM (what the host runs)

Workload (all processes compiled from the C below, inside the guest):
- fairness: agents A and B, each with one batch tool-call cgroup holding NCPU+1 spinners
  (more runnable spinners than CPUs in each agent). Agent weights r:1 for r in 1, 2, 4, 8;
  share = cpu.stat usage_usec of A / of B over the window, after a warm-up.
- latency: the same spinners (weights 1:1) plus an interactive tool call in agent A that
  sleeps to an absolute deadline every PERIOD, then does WORK of CPU time; one sample per
  period, --lat-seconds of them per mode (1000 by default, so p99 is the 10th worst).
  Wake-up latency = first instruction after the deadline - the deadline (timer delivery
  + scheduling); run-queue wait = the growth of the task's schedstat run_delay across the
  sleep (time queued after the kernel woke it, before it ran: the scheduler's share);
  completion = end of the work - the deadline. The driver blocks in waitpid meanwhile:
  a polling driver is a fair-class task that would itself delay the probe under (c).
Modes: (a) no weights, every task SCHED_NORMAL; (b) agentd's fallback: the weights written
to cpu.weight (interactive tool 200, batch 50, as the default policy's classes);
(c) agentd's scheduler loaded, the tasks moved to SCHED_EXT, map entries written by the
same code the daemon uses (agentd.kernel.bpf_scx).

Clock: by default the guest runs under QEMU `-icount shift=2`: guest time advances with
the instructions executed (4 ns each), so time the host spends running other VMs does not
show up as latency inside the guest, and runs on a busy 2-core host are comparable. With
one vCPU that clock is exact. With several, QEMU (7.2) runs the vCPUs round-robin on one
host thread in turns that end at its next timer deadline, unevenly (two pinned spinners
got 67% and 37% of a vCPU's solo speed): a vCPU can execute nothing for one or more 4 ms
ticks while the other runs. A wake-up on a vCPU that is between turns waits for its next
turn whatever the guest scheduler does (traced: the waking CPU had need_resched set
within 20 µs, then ran no instruction until a later tick). Those waits dominate every
multi-vCPU p99, in all three modes, and depend on which vCPU the probe happens to use;
the 1-vCPU guest measures the schedulers without them. A guest marked @host (2@host by
default) uses host time and QEMU's parallel vCPU threads instead: real SMP without the
round-robin turns, but every pause of a host thread reads as latency, so run it alone on
the host (flock -x /work/notes/vm.lock); on a loaded host its figures measure the load.
In the 2-vCPU icount guest, (c) also suffers from a kernel detail the turns magnify: the
wake-up preemption sets need_resched inside the timer interrupt, so the softirqs raised by
the same tick are handed to ksoftirqd, a fair-class thread that runs before any SCHED_EXT
task (traced: 440 ksoftirqd wake-ups in 7 s under (c) against 26 under (a); 87 of the 88
waits over 2 ms had ksoftirqd run first on the probe's CPU). On parallel vCPUs that costs
microseconds (run-queue wait p99 under 0.1 ms).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

RATIOS = (1, 2, 4, 8)
PERIOD_US = 10_000
WORK_US = 1_000
ICOUNT_SHIFT = 2

PROBE_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

/* run_delay of this thread (/proc/thread-self/schedstat, 2nd field): the time it spent
 * runnable on a run queue without running, kept by the kernel's core for every class. */
static long long run_delay(int fd)
{
	char buf[128];
	long long run = 0, delay = -1;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 0)
		return -1;
	buf[n] = 0;
	sscanf(buf, "%lld %lld", &run, &delay);
	return delay;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "spin")) {
		volatile unsigned long x = 0;
		for (;;) x++;
	}
	if (argc < 5) { fprintf(stderr, "usage: probe spin | probe lat ITER PERIOD_US WORK_US\n"); return 2; }
	int iters = atoi(argv[2]);
	long long period = atoll(argv[3]) * 1000, work = atoll(argv[4]) * 1000;
	int fd = open("/proc/thread-self/schedstat", O_RDONLY);
	long long next = ns(CLOCK_MONOTONIC) + period;
	for (int i = 0; i < iters; i++) {
		struct timespec ts = { next / 1000000000LL, next % 1000000000LL };
		long long d0 = run_delay(fd);
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		long long woke = ns(CLOCK_MONOTONIC);
		long long d1 = run_delay(fd);
		long long c0 = ns(CLOCK_THREAD_CPUTIME_ID);
		while (ns(CLOCK_THREAD_CPUTIME_ID) - c0 < work) ;
		long long done = ns(CLOCK_MONOTONIC);
		/* deadline -> running, deadline -> work done, queued after the wake-up -> running */
		printf("%lld %lld %lld\n", woke - next, done - next, d0 >= 0 && d1 >= 0 ? d1 - d0 : -1);
		next += period;
		while (next < done) next += period;	/* skip deadlines missed while working */
	}
	return 0;
}
"""


# --- guest side ---------------------------------------------------------------------------

class Guest:
    def __init__(self, out, seconds, islice_us=None, lat_seconds=None):
        from agentd.kernel.cgroupfs import CgroupFS
        self.out = out
        self.seconds = seconds
        self.lat_seconds = lat_seconds or seconds
        self.islice_us = islice_us
        self.fs = CgroupFS("/sys/fs/cgroup")
        self.ncpu = os.cpu_count() or 1
        self.root = f"agentd-bench-{os.getpid()}"
        self.procs = []
        self.tmp = tempfile.mkdtemp()
        self.probe = os.path.join(self.tmp, "probe")
        src = self.probe + ".c"
        with open(src, "w") as f:
            f.write(PROBE_C)
        subprocess.run(["gcc", "-O2", "-o", self.probe, src], check=True)

    def setup(self):
        fs = self.fs
        fs.enable_controllers("", ("cpu",))
        fs.mkdir(self.root, exist_ok=False)
        fs.enable_controllers(self.root, ("cpu",))
        for a in ("A", "B"):
            fs.mkdir(f"{self.root}/{a}")
            fs.enable_controllers(f"{self.root}/{a}", ("cpu",))
            fs.mkdir(f"{self.root}/{a}/batch")
        fs.mkdir(f"{self.root}/A/interactive")

    def cg(self, name):
        return f"{self.root}/{name}"

    def spawn(self, cg, argv, ext, stdout=None):
        procs_file = self.fs.path(cg, "cgroup.procs")

        def enter():
            fd = os.open(procs_file, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            if ext:
                os.sched_setscheduler(0, 7, os.sched_param(0))     # SCHED_EXT, inherited by exec

        p = subprocess.Popen(argv, preexec_fn=enter, stdout=stdout or subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []

    def set_weights(self, weights):
        for cg, w in weights.items():
            self.fs.write(self.cg(cg), "cpu.weight", str(w))

    def usage(self, cg):
        return self.fs.read_flat_keyed(self.cg(cg), "cpu.stat")["usage_usec"]

    def spinners(self, ext):
        for a in ("A", "B"):
            for _ in range(self.ncpu + 1):
                self.spawn(self.cg(f"{a}/batch"), [self.probe, "spin"], ext)

    def share(self, ext):
        self.spinners(ext)
        time.sleep(1.0)
        u0 = (self.usage("A"), self.usage("B"))
        time.sleep(self.seconds)
        u1 = (self.usage("A"), self.usage("B"))
        self.kill_all()
        a, b = u1[0] - u0[0], u1[1] - u0[1]
        return a / max(1, b), (a + b) / 1e6 / self.seconds

    def latency(self, ext):
        self.spinners(ext)
        time.sleep(0.5)
        iters = int(self.lat_seconds * 1e6 / PERIOD_US)
        path = os.path.join(self.tmp, f"lat-{time.monotonic_ns()}")
        with open(path, "w") as f:
            p = self.spawn(self.cg("A/interactive"), [self.probe, "lat", str(iters), str(PERIOD_US), str(WORK_US)],
                           ext, stdout=f)
            # Block in waitpid: Popen.wait(timeout) polls with sleeps, and this (fair-class)
            # process waking up every few ms would itself delay the probe, most under (c)
            # where every fair-class task runs before SCHED_EXT ones.
            guard = threading.Timer(self.lat_seconds * 20 + 60, p.kill)
            guard.start()
            p.wait()
            guard.cancel()
        self.kill_all()
        lat, comp, rq = [], [], []
        with open(path) as f:
            for line in f:
                x, y, z = line.split()
                lat.append(int(x) / 1e3)
                comp.append(int(y) / 1e3)
                if int(z) >= 0:
                    rq.append(int(z) / 1e3)
        return {"n": len(lat), "lat_p50": pct(lat, 50), "lat_p99": pct(lat, 99),
                "done_p50": pct(comp, 50), "done_p99": pct(comp, 99),
                "rq_p50": pct(rq, 50), "rq_p99": pct(rq, 99), "rq_max": max(rq) if rq else None,
                "lat_us": lat, "done_us": comp, "rq_us": rq}

    def run(self):
        from agentd.kernel import bpf_scx as scx
        from agentd.sched.weights import slices_ns
        from agentd.policy.loader import load_policy
        policy = load_policy("default")
        classes = policy.tool_classes
        w_int, w_batch = classes["interactive"].cpu.weight, classes["batch"].cpu.weight
        res = {"ncpu": self.ncpu, "seconds": self.seconds, "lat_seconds": self.lat_seconds, "kernel": os.uname().release,
               "fair": {}, "lat": {}, "weights": {"interactive": w_int, "batch": w_batch}}
        self.setup()
        dfl = {"A": 100, "B": 100, "A/batch": 100, "B/batch": 100, "A/interactive": 100}
        # (a) default scheduler, no agentd weights
        self.set_weights(dfl)
        res["lat"]["a"] = self.latency(ext=False)
        # (b) cpu.weight fallback
        for r in RATIOS:
            self.set_weights({**dfl, "A": 100 * r})
            res["fair"].setdefault(str(r), {})["b"] = self.share(ext=False)
        self.set_weights({**dfl, "A/batch": w_batch, "B/batch": w_batch, "A/interactive": w_int})
        res["lat"]["b"] = self.latency(ext=False)
        self.set_weights(dfl)
        # (c) agentd's sched_ext scheduler
        slices = list(slices_ns(policy.cpu))
        if self.islice_us:
            slices[0] = self.islice_us * 1000
        res["slices_us"] = [x // 1000 for x in slices]
        sched = scx.ScxScheduler(scx.make_config(slices)).load()
        try:
            ids = {n: self.fs.cgroup_id(self.cg(n)) for n in ("A/batch", "B/batch", "A/interactive")}
            sched.set_cgroup(ids["A/batch"], 1, w_batch, "batch")
            sched.set_cgroup(ids["B/batch"], 2, w_batch, "batch")
            sched.set_cgroup(ids["A/interactive"], 1, w_int, "interactive")
            for r in RATIOS:
                sched.set_agent(1, 100 * r)
                sched.set_agent(2, 100)
                res["fair"][str(r)]["c"] = self.share(ext=True)
            sched.set_agent(1, 100)
            res["lat"]["c"] = self.latency(ext=True)
            res["scx_stats"] = sched.stats()
            res["scx_running"] = sched.running()
        finally:
            sched.close()
        return res

    def cleanup(self):
        self.kill_all()
        try:
            self.fs.remove_tree(self.root)
        except Exception:
            pass


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def guest_main(out, seconds, islice_us=None, lat_seconds=None):
    g = None
    try:
        g = Guest(out, seconds, islice_us, lat_seconds)
        res = g.run()
        status = 0
    except Exception as err:
        import traceback
        res = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        status = 1
    finally:
        if g:
            g.cleanup()
    with open(os.path.join(out, "sched.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "status"), "w") as f:
        f.write(str(status))
    return status


# --- report -----------------------------------------------------------------------------

def table(res):
    """The printed report: one section per guest (vCPU count) of a run."""
    runs = res["runs"] if "runs" in res else [res]
    out = [section(r) for r in runs]
    return "\n\n".join(out)


def section(res):
    lines = [f"### {res['ncpu']} vCPU{'s' if res['ncpu'] > 1 else ''}: kernel {res['kernel']}, QEMU TCG "
             f"(guest clock: {res.get('clock', 'host time')}), {res['seconds']:.0f} s per fairness point, "
             f"{res['ncpu'] + 1} spinners per agent.", "",
             "Fairness (CPU of agent A / agent B; error = |measured / configured - 1|):", "",
             "| weights A:B | (b) cpu.weight | error | (c) agentd sched_ext | error |",
             "|---|---|---|---|---|"]
    worst = 0.0
    for r in RATIOS:
        f = res["fair"][str(r)]
        cells = []
        for mode in ("b", "c"):
            ratio, _busy = f[mode]
            err = abs(ratio / r - 1)
            if mode == "c":
                worst = max(worst, err)
            cells += [f"{ratio:.2f}:1", f"{100 * err:.1f}%"]
        lines.append(f"| {r}:1 | " + " | ".join(cells) + " |")
    lines += ["", f"Interactive tool call (wakes every {PERIOD_US // 1000} ms, {WORK_US // 1000} ms of CPU) "
              f"against the batch spinners, µs. Wake-up = deadline -> first instruction after it; "
              f"run-queue wait = time queued after the wake-up (schedstat run_delay); "
              f"completion = deadline -> work done:", "",
              "| mode | wake-up p50 | wake-up p99 | run-queue wait p50 | run-queue wait p99 | "
              "completion p50 | completion p99 | samples |",
              "|---|---|---|---|---|---|---|---|"]
    names = {"a": "(a) default scheduler, no weights",
             "b": f"(b) cpu.weight (interactive {res['weights']['interactive']}, batch {res['weights']['batch']})",
             "c": "(c) agentd sched_ext"}
    for m in ("a", "b", "c"):
        L = res["lat"][m]
        rq = (f"{L['rq_p50']:.0f} | {L['rq_p99']:.0f}" if L.get("rq_p50") is not None else "– | –")
        lines.append(f"| {names[m]} | {L['lat_p50']:.0f} | {L['lat_p99']:.0f} | {rq} | {L['done_p50']:.0f} | "
                     f"{L['done_p99']:.0f} | {L['n']} |")
    a99, c99 = res["lat"]["a"]["lat_p99"], res["lat"]["c"]["lat_p99"]
    ratio = c99 / a99 if a99 else float("nan")
    lines += ["", f"Targets: share error <= 15% for every ratio under (c): worst {100 * worst:.1f}% "
              f"({'met' if worst <= 0.15 else 'NOT met'}); interactive wake-up p99 (c) <= 0.5 x (a): "
              f"{ratio:.2f} x ({'met' if ratio <= 0.5 else 'NOT met'})."]
    if res.get("slices_us"):
        lines.append(f"(c) slices (µs) interactive/normal/batch: {'/'.join(map(str, res['slices_us']))}.")
    if res.get("scx_stats"):
        lines.append(f"Scheduler counters: {res['scx_stats']}")
    return "\n".join(lines)


# --- host side --------------------------------------------------------------------------

def boot(args, vmlinuz, ncpu, host_clock, tier):
    """One guest with `ncpu` vCPUs running every measurement; its result dict, or an error string."""
    out = tempfile.mkdtemp(prefix="agentd-bench-sched-")
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))} --guest {shlex.quote(out)} " \
          f"--seconds {args.seconds} --lat-seconds {args.lat_seconds}"
    if args.interactive_slice_us:
        cmd += f" --interactive-slice-us {args.interactive_slice_us}"
    argv = ["vng", "--disable-kvm", "-r", vmlinuz, "--user", "root", "--memory", tier.GUEST_MEMORY,
            "--cpus", str(ncpu), "--rwdir", out, "--cwd", REPO, "--exec", cmd]
    if not host_clock:
        # Guest time from instructions executed, not host time: QEMU stops the guest's
        # clock while the host deschedules it, so other VMs on the host do not show up
        # as scheduling latency inside the guest.
        argv += ["--qemu-opts", f"-icount shift={ICOUNT_SHIFT},sleep=off"]
    t0 = time.monotonic()
    with open(os.path.join(out, "console.log"), "w") as con:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            pass
    path = os.path.join(out, "sched.json")
    if not os.path.exists(path):
        return f"the {ncpu}-vCPU guest wrote no result after {time.monotonic() - t0:.0f} s; see {out}/console.log"
    with open(path) as f:
        res = json.load(f)
    if "error" in res:
        return f"the {ncpu}-vCPU guest failed: {res['error']}\n{res.get('trace', '')}"
    res["clock"] = "host time, parallel vCPU threads" if host_clock else f"QEMU -icount shift={ICOUNT_SHIFT}"
    print(f"bench/sched: {ncpu} vCPUs: raw result {path}", file=sys.stderr)
    return res


def host_main(args):
    sys.path.insert(0, os.path.join(REPO, "tests", "kernel"))
    import run as tier          # the kernel tier's fetch/cache/boot helpers
    subprocess.run(["make", "-s", "-C", os.path.join(REPO, "bpf")], check=True)
    tier.check_host()
    _abi, vmlinuz = tier.prepare_kernel()
    runs = []
    for spec in args.cpus.split(","):
        ncpu, _, clock = spec.partition("@")
        res = boot(args, vmlinuz, int(ncpu), args.host_clock or clock == "host", tier)
        if isinstance(res, str):
            print(f"bench/sched: {res}", file=sys.stderr)
            return 1
        runs.append(res)
    res = {"runs": runs}
    print(json.dumps(res, indent=1) if args.json else table(res))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guest", metavar="OUTDIR", help="run the measurements here (inside the VM)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement window per point")
    ap.add_argument("--lat-seconds", type=float, default=10.0,
                    help="interactive probe run per mode (one sample per %d ms)" % (PERIOD_US // 1000))
    ap.add_argument("--cpus", default="1,2,2@host",
                    help="guests to boot, one after the other: vCPU count, @host for the host clock "
                         "(default 1,2,2@host; see the clock note above)")
    ap.add_argument("--timeout", type=float, default=900.0, help="VM run limit, seconds")
    ap.add_argument("--host-clock", action="store_true",
                    help="guest clock = host time instead of QEMU -icount (instructions executed)")
    ap.add_argument("--interactive-slice-us", type=int, help="override the policy's interactive slice under (c)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--table", metavar="JSON", help="print the table of a saved result")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return 0
    if args.guest:
        return guest_main(args.guest, args.seconds, args.interactive_slice_us, args.lat_seconds)
    return host_main(args)


if __name__ == "__main__":
    sys.exit(main())
