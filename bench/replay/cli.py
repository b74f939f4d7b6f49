#!/usr/bin/env python3
"""Multi-tenant replay benchmark: real agent traces, three modes, on the kernel tier's VM.

    python3 bench/replay --traces DIR [--scenario isolation|density] [--mode none|static|agentd|all]
                            [--json FILE] [--quick] [--triples N] [--runs N] [--speed X] [--mem-scale F]

One trace = one agent (bench/replay/trace.py has the exact derivation): the agent process
holds the trace's memory before its first tool call; each Bash call is a real child process
that allocates and touches memory following the trace's samples during the call (relative
to the memory just before it) and frees it at its end; the gaps between calls are idle.

Scaling, the same for every mode: time is compressed by --speed (default 20: a 360 s trace
replays in 18 s; every run reports how busy the guest's 2 vCPUs were, so a figure where
the CPUs rather than memory bound shows as such) and memory multiplied by --mem-scale (default 0.25); the guest has
--guest-memory (default 4G) of RAM, 2 vCPUs, swap off. agentd sizes itself from the budget (the
memory.max above its root), so the policy's percentages count against the budget.

Modes: none (sibling cgroups under one parent memory.max = budget, memory.oom.group=1 per
agent as container runtimes set it), static (plus memory.max = budget / n per agent), agentd
(`agentd daemon` with policies/multi-tenant.yaml, unchanged, under the same parent limit;
agents via `agentd run --class high|low`, tool calls via `agentd tool`).

Trace order (isolation triples and density draws): replayed peak / baseline (the agent's
largest Bash-call rise over what it holds; trace.spike_ratio), largest first, then name;
isolation triple k = traces 3k..3k+2, the first HIGH, the others LOW; their largest tool
calls are lined up by construction (each holds its peak until all three are there; the run
exits 3 when no control did not lose an agent in every run). Solo times and peaks come from
each trace run alone (per mode family: plain cgroup for none/static, agentd for agentd; the
plain solo is run for agentd too, for agentd's own cost). Isolation budget = 0.85 x sum of
the three plain solo peaks; density budget = --density-budget (default: the budget under
which no control fits --density-fit agents, default 3, at the trace level). --half a|b
keeps one half of the folder's issue instances, so the other can be held out.

The workload program and agentd's launcher run from copies on the guest's tmpfs (its root
is the host's file system over 9p, which reads a binary again at every exec), as an installed
agentd runs from local disk; the same for every mode.

The host part boots the VM (tests/kernel/run.py fetches and caches the kernel) and runs this
same script inside it with --in-guest; progress goes to stderr, tables to stdout.
"""

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time

from . import report
from .trace import half_of, load_folder
from .vm import REPO, boot_in_vm

RUNS_DIR = os.path.join(REPO, ".cache", "replay")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces")
    p.add_argument("--scenario", choices=["isolation", "density", "both"], default="isolation")
    p.add_argument("--mode", default="all", help="none|static|agentd|all, or a comma list (static,agentd)")
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true", help="one triple, one run (density: up to 4 agents)")
    p.add_argument("--triples", type=int, default=3)
    p.add_argument("--first-triple", type=int, default=0, help="start at this triple (0-based) of the trace order")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--speed", type=float, default=20.0)
    p.add_argument("--mem-scale", type=float, default=0.25)
    p.add_argument("--guest-memory", default="4G")
    p.add_argument("--zram", default="1G",
                   help="size of the guest's zram swap (uncompressed capacity; 0: no swap). A running tool call "
                        "never swaps in any mode (none/static: memory.swap.max 0 per agent, Kubernetes' "
                        "default; agentd: its swap stage's 0 for tool calls); agentd reclaims idle agents "
                        "and the calls it paused into it")
    p.add_argument("--density-budget", type=int,
                   help="bytes (default: the budget under which no control fits --density-fit agents at the "
                        "trace level, trace.budget_for)")
    p.add_argument("--density-fit", type=int, default=3)
    p.add_argument("--half", choices=("a", "b"),
                   help="only one half of the folder's issue instances (crc32 of `instance` mod 2, as "
                        "bench/forecast.py --half): develop on one, hold the other out")
    p.add_argument("--max-agents", type=int, default=8)
    p.add_argument("--timeout", type=float, default=3000, help="seconds allowed for the whole VM run")
    p.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's JSON (also a partial one)")
    p.add_argument("--in-guest", metavar="OUT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.triples, a.runs, a.max_agents = 1, 1, min(a.max_agents, 4)
    return a


MODES = ["none", "static", "agentd"]


def traces_of(a):
    traces = load_folder(a.traces)
    if a.half:
        traces = half_of(traces, a.half)
        if not traces:
            raise SystemExit(f"replay: half {a.half} of {a.traces} holds no trace")
    return traces


def modes_of(a):
    if a.mode == "all":
        return list(MODES)
    modes = a.mode.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"replay: unknown mode(s) {', '.join(bad)}: use none, static, agentd or all")
    return modes


# --- inside the VM ------------------------------------------------------------------
def guest_main(a):
    from .runner import build_alloc, localize
    from .scenario import ISOLATION_FACTOR, Bench
    out = a.in_guest
    progress = open(os.path.join(out, "progress.log"), "a", buffering=1)

    def log(msg):
        progress.write(time.strftime("%H:%M:%S ") + msg + "\n")
    exe, alias = build_alloc(os.path.join(out, "bin"))
    # Run the binaries from the guest's tmpfs, as an installed agentd runs from local disk.
    exe, alias = localize(exe, tempfile.mkdtemp(prefix="agentd-replay-bin-"))
    bench = Bench(traces_of(a), a.speed, a.mem_scale, os.path.join(out, "work"), exe, alias, log)
    result = {"config": {"traces": os.path.abspath(a.traces), "speed": a.speed, "mem_scale": a.mem_scale,
                         "guest_memory": a.guest_memory, "kernel": os.uname().release, "triples": a.triples,
                         "runs": a.runs, "first_triple": a.first_triple, "isolation_budget_factor": ISOLATION_FACTOR,
                         "policy": "policies/multi-tenant.yaml", "swap": swap_summary()}}

    def save():
        with open(os.path.join(out, "result.json.tmp"), "w") as f:
            json.dump(result, f, indent=1)
        os.replace(os.path.join(out, "result.json.tmp"), os.path.join(out, "result.json"))
    def checkpoint(scenario, partial):
        result[scenario] = partial
        save()
    bench.checkpoint = checkpoint
    try:
        run_scenarios(a, bench, result, save)
    finally:
        bench.close()
    if bench.host_start_seconds is not None:
        result["config"]["agentd_daemon_start_s"] = round(bench.host_start_seconds, 1)
    save()
    log("done")


def swap_summary():
    """The guest's swap devices (/proc/swaps: name, type, size in KiB), as the runs had them."""
    try:
        with open("/proc/swaps") as f:
            return [" ".join(line.split()[:3]) for line in f.read().splitlines()[1:]]
    except OSError:
        return None


def run_scenarios(a, bench, result, save):
    from .trace import budget_for
    if a.scenario in ("isolation", "both"):
        result["isolation"] = bench.isolation(modes_of(a), a.triples, a.runs, a.first_triple)
        save()
    if a.scenario in ("density", "both"):
        budget = a.density_budget
        if budget is None:
            budget = budget_for([bench.schedules[t.name] for t in bench.traces[:a.max_agents]], a.density_fit)
            if budget is None:
                raise SystemExit(f"replay: no budget fits exactly {a.density_fit} agent(s) among the first "
                                 f"{a.max_agents}; give --density-budget")
        result["density"] = bench.density(modes_of(a), budget, a.max_agents)
        save()


# --- on the host --------------------------------------------------------------------
def tailer(path):
    """A callable that copies new lines of `path` to stderr."""
    pos = [0]
    lock = threading.Lock()

    def tick():
        with lock:
            try:
                with open(path) as f:
                    f.seek(pos[0])
                    data = f.read()
                    pos[0] = f.tell()
            except FileNotFoundError:
                return
            if data:
                sys.stderr.write("".join(f"replay: {line}\n" for line in data.splitlines()))
                sys.stderr.flush()
    return tick


def missing_builds():
    """agentd's compiled parts that the agentd mode needs but this tree lacks (a fresh git
    worktree has none: they are build outputs), at the paths the guest's daemon and the
    replay's agents load them from. Without them the daemon falls back to polling /proc
    and `agentd tool` to Python read over 9p per call: the run would measure the
    fallbacks, several times slower in the emulated guest, not agentd."""
    from agentd.kernel.bpf_objects import object_path
    from . import runner
    need = [runner.LAUNCHER] + [object_path(n) for n in ("lifecycle", "memwatch", "scx_agentd")]
    inside = os.path.join(REPO, "")
    return [p[len(inside):] if p.startswith(inside) else p for p in need if not os.path.exists(p)]


def host_main(a):
    traces_of(a)                        # fail here, not in the VM, on a bad folder
    missing = missing_builds() if "agentd" in modes_of(a) else []
    if missing:
        raise SystemExit(f"replay: {', '.join(missing)} missing in {REPO}: the agentd mode would measure "
                         f"agentd's fallbacks; build them first with `python3 -m agentd._build`")
    out = os.path.join(RUNS_DIR, time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    os.makedirs(out)
    from .runner import build_alloc
    build_alloc(os.path.join(out, "bin"))   # gcc on the host: the guest would take seconds
    fwd = ["--traces", os.path.abspath(a.traces), "--scenario", a.scenario, "--mode", a.mode,
           "--triples", str(a.triples), "--first-triple", str(a.first_triple), "--runs", str(a.runs), "--speed", str(a.speed),
           "--mem-scale", str(a.mem_scale), "--guest-memory", a.guest_memory, "--max-agents", str(a.max_agents),
           "--zram", a.zram]
    if a.density_budget:
        fwd += ["--density-budget", str(a.density_budget)]
    if a.half:
        fwd += ["--half", a.half]
    fwd += ["--density-fit", str(a.density_fit)]
    cmd = shlex.join([sys.executable, os.path.join(REPO, "bench", "replay"), *fwd, "--in-guest", out])
    print(f"replay: booting the VM ({a.guest_memory} RAM); work dir {out}", file=sys.stderr)
    t0 = time.monotonic()
    status = boot_in_vm(cmd, out, a.guest_memory, a.timeout, tailer(os.path.join(out, "progress.log")),
                        zram=None if a.zram in ("0", "") else a.zram)
    print(f"replay: VM run {time.monotonic() - t0:.0f} s, guest status {status}", file=sys.stderr)
    try:
        with open(os.path.join(out, "result.json")) as f:
            result = json.load(f)
    except (OSError, ValueError):
        log = os.path.join(out, "guest.log")
        tail = open(log).read()[-3000:] if os.path.exists(log) else "(no guest log)"
        print(f"replay: the guest wrote no result; guest log tail:\n{tail}", file=sys.stderr)
        return 2
    print_tables(result)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    if (result.get("isolation") or {}).get("none_lost_every_run") is False:
        print("replay: the line-up failed: no control kept every agent in some isolation run, so those runs "
              "did not test sharing", file=sys.stderr)
        return 3
    return 0 if status == 0 else 1


def print_tables(result):
    c = result["config"]
    swap = "swap " + ", ".join(c["swap"]) if c.get("swap") else "swap off"
    print(f"Replay on kernel {c['kernel']}, guest {c['guest_memory']} RAM, {swap}; time / {c['speed']:g}, "
          f"memory x {c['mem_scale']:g}; policy {c['policy']}\n")
    iso = result.get("isolation")
    if iso:
        summary = report.isolation_summary(iso)
        iso["summary"] = summary
        print("### A. Isolation (1 HIGH + 2 LOW, budget 0.85 x sum of solo peaks; medians over runs)\n")
        for t in iso["triples"]:
            print(f"- triple: HIGH {t['traces'][0]}, LOW {t['traces'][1]}, {t['traces'][2]}; "
                  f"budget {t['budget'] / 2**20:.0f} MiB")
        print()
        print(report.isolation_table(iso, summary))
        print()
        print(report.isolation_runs_table(iso))
        print()
        for text, ok in report.isolation_targets(summary):
            print(f"- target {text}: {'met' if ok else 'NOT met'}")
        print()
    den = result.get("density")
    if den:
        print(f"### B. Density (budget {den['budget'] / 2**20:.0f} MiB, agents in order, all class low)\n")
        print(report.density_table(den))
        print()
        b = den.get("bounds")
        if b:
            print(f"Trace-level bounds at this budget: no-collision {b['no_collision']}, largest call beside "
                  f"every baseline {b['spike_beside_baselines']}, fluid {b['fluid']}\n")
            print(report.density_steps_table(den))
            print()
        for text, ok in report.density_targets(den):
            print(f"- target {text}: {'met' if ok else 'NOT met'}")
        den["agents_reached"] = {m: v["agents"] for m, v in den["modes"].items()}


def _stop(signum, frame):
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so boot_once() stops the VM.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _stop)
    a = parse_args(argv)
    if a.report:
        with open(a.report) as f:
            print_tables(json.load(f))
        return 0
    if not a.traces:
        raise SystemExit("replay: --traces DIR is required")
    if a.in_guest:
        guest_main(a)
        return 0
    return host_main(a)


if __name__ == "__main__":
    sys.exit(main())
