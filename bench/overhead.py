"""What `agentd tool` adds to a tool call: `agentd tool -- /bin/true` against `/bin/true`.

    sudo python3 bench/overhead.py [--runs 500]        # real daemon on the host's cgroup v2
    python3 bench/overhead.py --against-double          # the test double instead (no root)

With the real daemon, the script starts `agentd daemon` on a private cgroup root,
socket, state dir and event log, re-runs itself as an agent under `agentd run`, and
times both commands from there. The daemon runs the shipped default policy with
automatic tool-call detection turned off, so that `/bin/true` really runs directly;
`--policy default` measures what an agent sees with detection on (then every child
of the agent, /bin/true included, is placed in a tool-call cgroup too). Runs are
interleaved (alternating order) so drift and noise hit both alike. It then checks
that the daemon logged one tool call per timed run (the launcher did not silently
fall back) and removes everything it made.

Times are wall clock from spawn to reap, in milliseconds. Wall time on a busy host
is mostly waiting for a CPU, so the CPU time each side used is printed too: the
launcher's (user+sys of the child, from wait4) and the daemon's per tool call.
"""

import argparse
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_MEDIAN_EXTRA_MS = 5.0
WARMUP = 20


def percentile(values, q):
    """Nearest-rank percentile: a value that was really measured."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))]


def spawn_ms(argv, env, err_fd, cpu):
    """Wall time of one run, spawn to reap; the command must succeed. Its CPU time
    (with the children it reaped) is appended to cpu."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, err_fd, 2)])
    _, status, ru = os.wait4(pid, 0)
    t1 = time.perf_counter_ns()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed with status {os.waitstatus_to_exitcode(status)}")
    cpu.append((ru.ru_utime + ru.ru_stime) * 1e3)
    return (t1 - t0) / 1e6


def measure(launcher, socket_path, runs):
    """Interleaved runs of both commands; returns (direct_ms, via_agentd_ms, stderr text)."""
    direct = ["/bin/true"]
    via = [launcher, "tool", "--", "/bin/true"]
    env = dict(os.environ, AGENTD_SOCKET=socket_path)
    env.pop("AGENTD_FEEDBACK_FILE", None)
    env.pop("AGENTD_FEEDBACK_FD", None)
    with tempfile.TemporaryFile() as err:
        fd = err.fileno()
        for _ in range(WARMUP):
            spawn_ms(direct, env, fd, [])
            spawn_ms(via, env, fd, [])
        a, b, cpu_a, cpu_b = [], [], [], []
        for i in range(runs):
            # Alternate which goes first: neither always runs on a just-warmed cache.
            if i % 2:
                a.append(spawn_ms(direct, env, fd, cpu_a))
                b.append(spawn_ms(via, env, fd, cpu_b))
            else:
                b.append(spawn_ms(via, env, fd, cpu_b))
                a.append(spawn_ms(direct, env, fd, cpu_a))
        err.seek(0)
        text = err.read().decode(errors="replace")
    return a, b, (sum(cpu_a) / runs, sum(cpu_b) / runs), text


def report(direct, via, label, load, cpu):
    md, mv = statistics.median(direct), statistics.median(via)
    pd, pv = percentile(direct, 99), percentile(via, 99)
    out = {
        "daemon": label, "runs": len(direct),
        "direct_median_ms": md, "direct_p99_ms": pd, "agentd_median_ms": mv, "agentd_p99_ms": pv,
        "extra_median_ms": mv - md, "extra_p99_ms": pv - pd,
        "ratio_median": mv / md, "ratio_p99": pv / pd, "loadavg_1min": load,
        "direct_cpu_ms": cpu[0], "agentd_cpu_ms": cpu[1],
    }
    # The daemon's round trips wait for a CPU: on a busy host they grow with the load.
    print(f"agentd tool overhead ({label}, {len(direct)} interleaved runs each, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before / {load[1]:.1f} after)")
    print(f"  /bin/true                     median {md:7.3f} ms   p99 {pd:7.3f} ms")
    print(f"  agentd tool -- /bin/true      median {mv:7.3f} ms   p99 {pv:7.3f} ms")
    print(f"  extra                         median {mv - md:7.3f} ms   p99 {pv - pd:7.3f} ms")
    print(f"  ratio                         median {mv / md:7.2f}x     p99 {pv / pd:7.2f}x")
    print(f"  CPU per run (user+sys)        /bin/true {cpu[0]:.3f} ms, agentd tool -- /bin/true {cpu[1]:.3f} ms")
    verdict = "met" if mv - md <= TARGET_MEDIAN_EXTRA_MS else "NOT met"
    print(f"  target: median extra <= {TARGET_MEDIAN_EXTRA_MS} ms: {verdict}")
    return out


def find_launcher(path):
    if path:
        return path
    built = REPO / "agentd" / "_bin" / "agentd"
    if built.exists():
        return str(built)
    from agentd._build import build_launcher
    return str(build_launcher(out=Path(tempfile.mkdtemp(prefix="agentd-bench-")) / "agentd"))


def inner(args):
    load_before = os.getloadavg()[0]
    direct, via, cpu, err = measure(args.launcher, args.socket, args.runs)
    load = (load_before, os.getloadavg()[0])
    if "agentd: " in err:   # a fallback warning or an error: the timing would be meaningless
        raise SystemExit(f"bench: agentd tool fell back or failed:\n{err[:2000]!r}")
    if err.strip():   # notices (e.g. queued by admission control) are not failures: say so
        print(f"  note: agentd printed {len(err.splitlines())} notice lines, e.g. {err.splitlines()[0][:200]!r}")
    out = report(direct, via, args.label, load, cpu)
    if args.json:
        Path(args.json).write_text(json.dumps(out) + "\n")


def with_double(args, launcher):
    spec = importlib.util.spec_from_file_location("launcher_double", REPO / "tests" / "unit" / "test_launcher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as d:
        fake = mod.FakeDaemon(os.path.join(d, "agentd.sock"), done={"ok": True, "messages": [], "result": None})
        try:
            args.launcher, args.socket, args.label = launcher, fake.path, "test double for the daemon"
            inner(args)
            assert len(fake.tool_requests("tool_done")) == args.runs + WARMUP
        finally:
            fake.close()


def wait_for_socket(path, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: agentd daemon exited with status {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b'{"v":1,"op":"hello"}\n')
                if s.recv(65536):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench: agentd daemon did not start serving")


def no_detection_policy(directory):
    """The shipped default policy with automatic tool-call detection off."""
    import yaml
    pol = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    pol.setdefault("detection", {})["enabled"] = False
    path = Path(directory) / "bench-policy.yaml"
    path.write_text(yaml.safe_dump(pol))
    return str(path)


def with_real_daemon(args, launcher):
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        raise SystemExit("bench: the real daemon needs root and cgroup v2 (or use --against-double)")
    fs = CgroupFS(mount)
    root = f"agentd-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as d:
        sock, events = os.path.join(d, "agentd.sock"), os.path.join(d, "events.jsonl")
        py = [sys.executable, "-m", "agentd"]
        policy = args.policy or no_detection_policy(d)
        with open(os.path.join(d, "daemon.log"), "w") as log:
            daemon = subprocess.Popen(py + ["daemon", "--root", root, "--socket", sock, "--state-dir",
                                            os.path.join(d, "state"), "--event-log", events,
                                            "--metrics-listen", "none", "--policy", policy],
                                      stdout=log, stderr=log, cwd=REPO)
        try:
            wait_for_socket(sock, daemon)
            res = os.path.join(d, "result.json")
            label = f"real daemon, policy {args.policy or 'default without detection'}"
            cmd = py + ["run", "--user", "root", "--socket", sock, "--", sys.executable, str(Path(__file__).resolve()), "--inner",
                        "--launcher", launcher, "--socket", sock, "--runs", str(args.runs), "--json", res,
                        "--label", label]
            import psutil
            before = sum(psutil.Process(daemon.pid).cpu_times()[:2])
            rc = subprocess.run(cmd, cwd=REPO).returncode
            daemon_cpu = sum(psutil.Process(daemon.pid).cpu_times()[:2]) - before
            if rc != 0:
                raise SystemExit(f"bench: the agent run failed with status {rc}; daemon log:\n"
                                 + Path(d, "daemon.log").read_text()[-3000:])
            with open(events) as f:
                ends = [e for e in map(json.loads, f) if e.get("event") == "tool_end" and e.get("origin") != "auto"]
            if len(ends) != args.runs + WARMUP:
                raise SystemExit(f"bench: the daemon logged {len(ends)} tool calls, expected {args.runs + WARMUP}")
            print(f"  checked: the daemon placed and logged all {len(ends)} tool calls")
            # Includes the agent's own start and end: a slight overestimate per call.
            per_call = daemon_cpu * 1e3 / len(ends)
            print(f"  daemon CPU per tool call      {per_call:.3f} ms (user+sys)")
            if args.json:
                out = json.loads(Path(res).read_text())
                out["daemon_cpu_ms_per_call"] = per_call
                Path(args.json).write_text(json.dumps(out) + "\n")
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            fs.destroy(root, 5)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500, help="timed runs of each command (>= 200)")
    p.add_argument("--launcher", help="the agentd launcher binary (default: agentd/_bin/agentd, built if missing)")
    p.add_argument("--against-double", action="store_true", help="time against the test double, not the daemon")
    p.add_argument("--policy", help="daemon policy (default: the shipped default with detection off)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    p.add_argument("--label", default="real daemon", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runs < 200:
        p.error("--runs must be at least 200 for a meaningful p99")
    if args.inner:
        return inner(args)
    launcher = find_launcher(args.launcher)
    if args.against_double:
        return with_double(args, launcher)
    return with_real_daemon(args, launcher)


if __name__ == "__main__":
    main()
