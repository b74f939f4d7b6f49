"""What one tool call costs the daemon: CPU ms and wall ms per `agentd tool` call, next
to the same command run plainly, in one run.

    sudo python3 bench/percall.py                      # this host's cgroup v2
    python3 bench/percall.py --vm                      # the kernel tier's VM (QEMU, 2 vCPUs)
    python3 bench/percall.py --vm --tree /path/to/other/checkout --tree .   # side by side
    python3 bench/percall.py --vm --same-boot --tree 0f6dc0a --tree HEAD --rounds 3 --calls 100

A tree is a checkout's folder or a git revision of this repository (checked out once into
.cache/trees/<sha> and built there). `--rounds N` measures the list of trees N times,
alternated (A B A B ...). In the VM each tree gets its own boot unless `--same-boot`: then
one boot measures every tree in turn, which takes the boot-to-boot drift (20-30 % seen
under emulation) out of the comparison. With a tree measured more than once, a summary
gives each tree's median and range over its runs and the ratio to the first tree.

For each source tree (default: this checkout) the script starts `agentd daemon` from it on
a private cgroup root (under a 1 GiB memory.max in the VM, so the policy's percentages
resolve as on a small host), with the given policy (default: multi-tenant), its socket,
state and event log in a temporary folder. It measures the daemon's idle CPU for a few
seconds, then starts one agent that runs `agentd tool -- CMD` and plain `CMD` in turn,
`--calls` times each, and reports per call (in the VM also with the launcher copied to
the guest's tmpfs: its root file system is 9p, which re-reads a binary at every exec):

  wall      spawn to reap, median and mean (the agent waits this long)
  caller    user+sys CPU of the command and everything it forked (launcher included)
  daemon    the daemon's user+sys CPU over the calls (/proc/PID/stat), less its idle rate

The idle rate (timers: enforcer ticks, sweeps, samples; measured before and after the calls,
the lower counts) is reported on its own line: it is what the daemon costs with no call
running. Run VM jobs under the shared VM lock.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IDLE_S = 4.0
WARMUP = 3
PARENT = "agentd-percall"
PARENT_MEMORY = 1 << 30


def resolve_tree(spec):
    """A folder as given; else a git revision of this repository, checked out (once) into
    .cache/trees/<sha> with its launcher and BPF objects built there."""
    if os.path.isdir(spec):
        return str(Path(spec).resolve())
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", spec + "^{commit}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"percall: --tree {spec!r} is neither a folder nor a git revision of {REPO}") from None
    tree = REPO / ".cache" / "trees" / sha[:12]
    if not (tree / "agentd" / "_bin" / "agentd").exists():
        if not tree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), sha], check=True)
        subprocess.run([sys.executable, "-m", "agentd._build"], cwd=tree, check=True,
                       env=dict(os.environ, PYTHONPATH=str(tree)))
    return str(tree)


def idle_rate_of(pid):
    """The daemon's CPU seconds per second over IDLE_S with no call running."""
    c0 = proc_cpu_s(pid)
    time.sleep(IDLE_S)
    return (proc_cpu_s(pid) - c0) / IDLE_S


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        w = f.read().rsplit(")", 1)[1].split()
    return (int(w[11]) + int(w[12])) / os.sysconf("SC_CLK_TCK")


# --- inside the agent -----------------------------------------------------------------
def agent_loop(args):
    """Runs as the agent: the variants (plain CMD, `agentd tool -- CMD` with each launcher)
    in turn, rotating which goes first; JSON to args.result."""
    variants = json.loads(args.variants)
    env = dict(os.environ)
    err = os.open(os.path.join(os.path.dirname(args.result), "agent.err"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def one(argv):
        t = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, err, 2)])
        _, status, ru = os.wait4(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"percall: {' '.join(argv)} exited with {os.waitstatus_to_exitcode(status)}")
        return (time.perf_counter() - t) * 1e3, (ru.ru_utime + ru.ru_stime) * 1e3

    for _ in range(WARMUP):
        for _, argv in variants:
            one(argv)
    res = {name: [] for name, _ in variants}
    # The daemon's CPU over the whole loop (its counters tick in 10 ms steps: per-call
    # deltas would be mostly rounding); the caller takes its idle share off.
    c0, t0 = proc_cpu_s(args.daemon_pid), time.monotonic()
    for i in range(args.calls):
        # Rotate which goes first: none always runs on a just-warmed cache.
        for name, argv in variants[i % len(variants):] + variants[:i % len(variants)]:
            res[name].append(one(argv))
    res["daemon_cpu_s"], res["elapsed_s"] = proc_cpu_s(args.daemon_pid) - c0, time.monotonic() - t0
    Path(args.result).write_text(json.dumps(res))


# --- one tree ---------------------------------------------------------------------------
def measure_tree(tree, args, work, label=None):
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    fs = CgroupFS(find_cgroup2_mount())
    root = f"{PARENT}/{os.getpid()}-{abs(hash(tree)) % 10000}"
    d = tempfile.mkdtemp(prefix="percall-", dir=work)
    sock, events = os.path.join(d, "agentd.sock"), os.path.join(d, "events.jsonl")
    launcher = os.path.join(tree, "agentd", "_bin", "agentd")
    env = dict(os.environ, AGENTD_SOCKET=sock, PYTHONPATH=tree)
    policy = args.policy if os.path.sep in args.policy else os.path.join(tree, "policies", f"{args.policy}.yaml")
    with open(os.path.join(d, "daemon.log"), "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "agentd", "daemon", "--root", root, "--socket", sock,
                                   "--state-dir", os.path.join(d, "state"), "--event-log", events,
                                   "--metrics-listen", "none", "--policy", policy],
                                  stdout=log, stderr=log, cwd=tree, env=env)
    try:
        deadline = time.monotonic() + 600
        while not (os.path.exists(events) and "daemon_start" in Path(events).read_text()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"percall: the daemon from {tree} did not start:\n"
                                 + Path(d, "daemon.log").read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(2.0)                   # the stages' first ticks
        idle_before = idle_rate_of(daemon.pid)
        out = os.path.join(d, "agent.json")
        cmd = shlex.split(args.cmd)
        variants = [("plain", cmd), ("agentd", [launcher, "tool", "--"] + cmd)]
        if args.guest:
            # The guest's root is the host's file system over 9p, which keeps no page
            # cache between execs: every start of a binary there reads it again (tens of
            # ms of CPU under emulation). An installed launcher is on a local disk:
            # measure a copy on the guest's tmpfs too.
            local = os.path.join(d, "agentd-launcher")
            shutil.copy2(launcher, local)
            variants.append(("agentd, launcher on tmpfs", [local, "tool", "--"] + cmd))
        agent = [launcher, "run", "--user", "root", "--name", "percall", "--", sys.executable, str(Path(__file__).resolve()),
                 "--agent-loop", "--variants", json.dumps(variants), "--daemon-pid", str(daemon.pid),
                 "--calls", str(args.calls), "--result", out]
        rc = subprocess.run(agent, env=env, cwd=tree).returncode
        if rc != 0:
            raise SystemExit(f"percall: the agent failed ({rc}):\n" + Path(d, "agent.err").read_text()[-2000:]
                             + Path(d, "daemon.log").read_text()[-2000:])
        res = json.loads(Path(out).read_text())
        # Idle again after the calls: a window that caught some one-off work (a start that
        # was not over, under emulation on a busy host) reads high, and would take too much
        # off; the lower of the two is the daemon's idle cost.
        idle_after = idle_rate_of(daemon.pid)
        idle_rate = min(idle_before, idle_after)
        err = Path(d, "agent.err").read_text()
        if "agentd: " in err:
            raise SystemExit(f"percall: agentd tool fell back or failed:\n{err[:2000]}")
        names = [name for name, _ in variants]
        n = sum(len(res[name]) for name in names[1:])          # tool calls timed
        ends = [e for e in map(json.loads, open(events)) if e.get("event") == "tool_end" and e.get("origin") != "auto"]
        if len(ends) != n + WARMUP * (len(names) - 1):
            raise SystemExit(f"percall: the daemon logged {len(ends)} tool calls, expected {n + WARMUP * (len(names) - 1)}")
        # The daemon does the same work whichever launcher asked: its CPU over the loop,
        # less its idle rate, shared over every tool call.
        daemon_ms = res["daemon_cpu_s"] * 1e3 / n
        idle_ms = idle_rate * res["elapsed_s"] * 1e3 / n
        row = {"tree": tree, "label": label or tree, "calls": args.calls, "policy": args.policy, "cmd": args.cmd,
               "idle_cpu_ms_per_s": idle_rate * 1e3, "idle_cpu_ms_per_s_before": idle_before * 1e3,
               "idle_cpu_ms_per_s_after": idle_after * 1e3, "daemon_cpu_ms_per_call": daemon_ms - idle_ms,
               "daemon_cpu_ms_per_call_raw": daemon_ms, "variants": {}}
        for name in names:
            walls, cpus = [w for w, _ in res[name]], [c for _, c in res[name]]
            row["variants"][name] = {"wall_median_ms": statistics.median(walls), "wall_mean_ms": statistics.mean(walls),
                                     "caller_cpu_ms": statistics.mean(cpus)}
        return row
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        fs.destroy(root, 5)


def report(rows, where):
    print(f"per tool call, {where}: `{rows[0]['cmd']}`, policy {rows[0]['policy']}, {rows[0]['calls']} calls each")
    print(f"  {'tree':30s} {'':26s} {'wall median':>11s} {'wall mean':>10s} {'caller CPU':>11s} {'daemon CPU':>11s}")
    for r in rows:
        label = r.get("label", r["tree"])
        t = label if len(label) <= 30 else "..." + label[-27:]
        plain = r["variants"]["plain"]
        for name, v in r["variants"].items():
            daemon = "" if name == "plain" else f"{r['daemon_cpu_ms_per_call']:9.1f}ms"
            extra = "" if name == "plain" else (f"  (+{v['wall_median_ms'] - plain['wall_median_ms']:.1f} ms wall, "
                                                f"+{v['caller_cpu_ms'] - plain['caller_cpu_ms']:.1f} ms caller CPU)")
            print(f"  {t:30s} {name:26s} {v['wall_median_ms']:9.1f}ms {v['wall_mean_ms']:8.1f}ms "
                  f"{v['caller_cpu_ms']:9.1f}ms {daemon:>11s}{extra}")
            t = ""
        both = (f", the lower of {r['idle_cpu_ms_per_s_before']:.1f} before and {r['idle_cpu_ms_per_s_after']:.1f} "
                f"after the calls" if "idle_cpu_ms_per_s_after" in r else "")
        print(f"  {'':30s} daemon idle: {r['idle_cpu_ms_per_s']:.1f} ms CPU per second{both} "
              f"(subtracted; raw {r['daemon_cpu_ms_per_call_raw']:.1f} ms per call)")
    summary(rows)
    sys.stdout.flush()


def summary(rows):
    """With a tree measured more than once: per tree, the median and range over its runs of
    daemon CPU per call and of the wall per call (plain, and `agentd tool` with the launcher
    the guest would have installed); the ratio of each tree's medians to the first tree's."""
    by = {}
    for r in rows:
        by.setdefault(r.get("label", r["tree"]), []).append(r)
    if all(len(rs) < 2 for rs in by.values()):
        return
    tool = "agentd, launcher on tmpfs" if "agentd, launcher on tmpfs" in rows[0]["variants"] else "agentd"
    cols = [("daemon CPU per call", lambda r: r["daemon_cpu_ms_per_call"]),
            ("raw (idle kept)", lambda r: r["daemon_cpu_ms_per_call_raw"]),
            ("plain wall", lambda r: r["variants"]["plain"]["wall_median_ms"]),
            (f"{tool} wall", lambda r: r["variants"][tool]["wall_median_ms"]),
            ("idle CPU ms/s", lambda r: r["idle_cpu_ms_per_s"])]
    print(f"summary over runs: median [min-max] per tree; ratio = median / {next(iter(by))}'s median")
    first = None
    for label, rs in by.items():
        meds = [statistics.median(f(r) for r in rs) for _, f in cols]
        first = first or meds
        cells = []
        for (name, f), m, m0 in zip(cols, meds, first):
            v = [f(r) for r in rs]
            cells.append(f"{name} {m:.1f} [{min(v):.1f}-{max(v):.1f}] x{m / m0 if m0 else float('nan'):.2f}")
        print(f"  {label} ({len(rs)} runs): " + "; ".join(cells))


def run_here(args):
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        raise SystemExit("percall: needs root and cgroup v2 (or --vm)")
    fs = CgroupFS(mount)
    fs.mkdir(PARENT)
    if args.guest:
        fs.enable_controllers("", ("memory", "cpu", "pids"))
        fs.enable_controllers(PARENT, ("memory", "cpu", "pids"))
        if fs.has(PARENT, "memory.max"):
            fs.write(PARENT, "memory.max", PARENT_MEMORY)
    work = tempfile.mkdtemp(prefix="agentd-percall-")
    rows = []
    try:
        for label, tree in args.runs:
            rows.append(measure_tree(tree, args, work, label))
            if args.json:                 # what was measured so far survives a later failure
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        shutil.rmtree(work)               # kept on a failure: the daemon's log is there
    finally:
        if fs.exists(PARENT) and not fs.children(PARENT):
            fs.rmdir(PARENT)
    report(rows, "in the kernel tier's VM (QEMU TCG, 2 vCPUs)" if args.guest else f"on this host ({os.uname().release})")


def guest_argv(args, runs, result):
    argv = [sys.executable, str(Path(__file__).resolve()), "--guest", "--calls", str(args.calls),
            "--policy", args.policy, "--cmd", args.cmd, "--json", result]
    for label, tree in runs:
        argv += ["--tree", tree, "--label", label]
    return argv


def run_vm(args):
    """One boot per tree, or one for all with --same-boot. Under emulation the guest kernel
    sometimes hits an int3 Oops while it patches its text (at boot, or loading the sched_ext
    scheduler, which every daemon start does); a boot that panics is booted again."""
    sys.path.insert(0, str(REPO))
    from bench.replay.vm import boot_in_vm    # the kernel tier's VM
    base = args.out or tempfile.mkdtemp(prefix="percall-", dir=REPO / ".cache")
    rows = []
    boots = [args.runs] if args.same_boot else [[run] for run in args.runs]
    for i, runs in enumerate(boots):
        for attempt in range(3):
            out = os.path.join(base, f"boot{i}-{attempt}")
            os.makedirs(out, exist_ok=True)
            result = os.path.join(out, "percall.json")
            t0 = time.monotonic()
            status = boot_in_vm(" ".join(shlex.quote(a) for a in guest_argv(args, runs, result)), out, "4G",
                                args.timeout)
            if status == 0 and os.path.exists(result):
                rows += json.loads(Path(result).read_text())
                print(f"percall: boot {i + 1} of {len(boots)} ({', '.join(label for label, _ in runs)}) took "
                      f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
                break
            console = Path(out, "console.log").read_text(errors="replace") if Path(out, "console.log").exists() else ""
            if "Kernel panic" not in console:
                log = Path(out, "guest.log")
                raise SystemExit(f"percall: the guest run failed (status {status}); see {out}\n"
                                 + (log.read_text()[-3000:] if log.exists() else ""))
            print(f"percall: the guest kernel panicked (emulation); booting again", file=sys.stderr)
        else:
            raise SystemExit(f"percall: the guest kernel panicked {attempt + 1} times; see {base}")
    where = "in the kernel tier's VM (QEMU TCG, 2 vCPUs" + (", one boot)" if args.same_boot else ", one boot per tree)")
    report(rows, where)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vm", action="store_true", help="run in the kernel tier's VM")
    p.add_argument("--tree", action="append",
                   help="agentd source tree to measure: a folder or a git revision (repeatable; default: this one)")
    p.add_argument("--rounds", type=int, default=1, help="measure the list of trees this many times, alternated")
    p.add_argument("--same-boot", action="store_true", help="(--vm) measure every tree in one boot of the guest")
    p.add_argument("--calls", type=int, help="tool calls (and plain runs) per tree (default: 40 in the VM, 300 here)")
    p.add_argument("--policy", default="multi-tenant", help="shipped policy name or a path")
    p.add_argument("--cmd", default="/bin/sh -c true", help="the command each call runs")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--out", help="(--vm) folder for the guest's logs")
    p.add_argument("--timeout", type=int, default=1800, help="(--vm) seconds for the whole guest run")
    p.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--agent-loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variants", help=argparse.SUPPRESS)
    p.add_argument("--daemon-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--label", action="append", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.agent_loop:
        return agent_loop(args)
    if args.guest:                        # the host resolved them
        args.runs = list(zip(args.label, args.tree))
    else:
        specs = args.tree or [str(REPO)]
        trees = {spec: resolve_tree(spec) for spec in specs}
        args.runs = [(spec, trees[spec]) for spec in specs] * args.rounds
    args.calls = args.calls or (40 if args.vm or args.guest else 300)
    sys.path.insert(0, str(REPO))
    return run_vm(args) if args.vm else run_here(args)


if __name__ == "__main__":
    main()
