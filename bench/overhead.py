"""What `agentd tool` adds to a tool call: `agentd tool -- /bin/true` against `/bin/true`.

    sudo python3 bench/overhead.py [--runs 500]        # real daemon on the host's cgroup v2
    python3 bench/overhead.py --against-double          # the test double instead (no root)

With the real daemon, the script starts `agentd daemon` on a private cgroup root,
socket, state dir and event log, re-runs itself as an agent under `agentd run`, and
times both commands from there, interleaved (alternating order) in the same run so
drift and noise hit both alike. It then checks that the daemon logged one tool call
per timed run (the launcher did not silently fall back) and removes everything it made.
Times are wall clock from spawn to reap, in milliseconds.
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


def spawn_ms(argv, env, err_fd):
    """Wall time of one run, spawn to reap; the command must succeed."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, err_fd, 2)])
    _, status = os.waitpid(pid, 0)
    t1 = time.perf_counter_ns()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed with status {os.waitstatus_to_exitcode(status)}")
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
            spawn_ms(direct, env, fd)
            spawn_ms(via, env, fd)
        a, b = [], []
        for i in range(runs):
            # Alternate which goes first: neither always runs on a just-warmed cache.
            if i % 2:
                a.append(spawn_ms(direct, env, fd))
                b.append(spawn_ms(via, env, fd))
            else:
                b.append(spawn_ms(via, env, fd))
                a.append(spawn_ms(direct, env, fd))
        err.seek(0)
        text = err.read().decode(errors="replace")
    return a, b, text


def report(direct, via, label):
    md, mv = statistics.median(direct), statistics.median(via)
    pd, pv = percentile(direct, 99), percentile(via, 99)
    out = {
        "daemon": label, "runs": len(direct),
        "direct_median_ms": md, "direct_p99_ms": pd, "agentd_median_ms": mv, "agentd_p99_ms": pv,
        "extra_median_ms": mv - md, "extra_p99_ms": pv - pd,
        "ratio_median": mv / md, "ratio_p99": pv / pd,
    }
    print(f"agentd tool overhead ({label} daemon, {len(direct)} interleaved runs each)")
    print(f"  /bin/true                     median {md:7.3f} ms   p99 {pd:7.3f} ms")
    print(f"  agentd tool -- /bin/true      median {mv:7.3f} ms   p99 {pv:7.3f} ms")
    print(f"  extra                         median {mv - md:7.3f} ms   p99 {pv - pd:7.3f} ms")
    print(f"  ratio                         median {mv / md:7.2f}x     p99 {pv / pd:7.2f}x")
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
    direct, via, err = measure(args.launcher, args.socket, args.runs)
    if err.strip():
        raise SystemExit(f"bench: agentd tool printed warnings (did it fall back?):\n{err[:2000]}")
    out = report(direct, via, args.label)
    if args.json:
        Path(args.json).write_text(json.dumps(out) + "\n")


def with_double(args, launcher):
    spec = importlib.util.spec_from_file_location("launcher_double", REPO / "tests" / "unit" / "test_launcher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as d:
        fake = mod.FakeDaemon(os.path.join(d, "agentd.sock"), done={"ok": True, "messages": [], "result": None})
        try:
            args.launcher, args.socket, args.label = launcher, fake.path, "test-double"
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
        with open(os.path.join(d, "daemon.log"), "w") as log:
            daemon = subprocess.Popen(py + ["daemon", "--root", root, "--socket", sock, "--state-dir",
                                            os.path.join(d, "state"), "--event-log", events,
                                            "--metrics-listen", "none"], stdout=log, stderr=log, cwd=REPO)
        try:
            wait_for_socket(sock, daemon)
            res = os.path.join(d, "result.json")
            cmd = py + ["run", "--socket", sock, "--", sys.executable, str(Path(__file__).resolve()), "--inner",
                        "--launcher", launcher, "--socket", sock, "--runs", str(args.runs), "--json", res]
            rc = subprocess.run(cmd, cwd=REPO).returncode
            if rc != 0:
                raise SystemExit(f"bench: the agent run failed with status {rc}; daemon log:\n"
                                 + Path(d, "daemon.log").read_text()[-3000:])
            with open(events) as f:
                ends = [e for e in map(json.loads, f) if e.get("event") == "tool_end"]
            if len(ends) != args.runs + WARMUP:
                raise SystemExit(f"bench: the daemon logged {len(ends)} tool calls, expected {args.runs + WARMUP}")
            print(f"  checked: the daemon placed and logged all {len(ends)} tool calls")
            if args.json:
                Path(args.json).write_text(Path(res).read_text())
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            if fs.exists(root):
                fs.kill(root)
                fs.wait_empty(root, 5)
                fs.remove_tree(root)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500, help="timed runs of each command (>= 200)")
    p.add_argument("--launcher", help="the agentd launcher binary (default: agentd/_bin/agentd, built if missing)")
    p.add_argument("--against-double", action="store_true", help="time against the test double, not the daemon")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    p.add_argument("--label", default="real", help=argparse.SUPPRESS)
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
