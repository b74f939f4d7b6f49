#!/usr/bin/env python3
"""Per-call overhead of agentd's container path next to a plain `podman exec`, side by side
in one boot of the kernel-tier VM (rootful podman needs full cgroup v2).

    python3 bench/containers.py [--rounds N]          in the kernel-tier VM, real podman
    python3 bench/containers.py --host [--rounds N]   on this host, a stand-in runtime

Runs tests/kernel/test_containers.py::test_exec_overhead_side_by_side with N rounds: each
round times `podman exec C true` into a container under an agent (the exec is stopped at
exec by the lifecycle program, placed in a tool call of its own and resumed) and into a
container podman placed itself, alternately; it prints the medians and their difference.
Under QEMU software emulation every process start is ~100x slower than on hardware:
compare the two columns, not the absolute times.

--host (no podman: this host's controllers are cgroup v1's) times the kernel-level part of
an exec session alone, the way runc/crun enter a container: a process writes itself into a
container's cgroup and execs `true`, alternately into a cgroup below an agent's container
parent (stopped, placed, resumed by the daemon) and into a cgroup outside any agent; and
the daemon's own account of how long each session waited stopped.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host(rounds):
    import statistics
    import tempfile
    import time
    sys.path.insert(0, REPO)
    from agentd.kernel.cgroupfs import CgroupFS
    from tests.helpers import DaemonProc, agentd_cmd, cgroup2_mount, kill_tree
    mount = cgroup2_mount()
    root = f"agentd-bench-ctr-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="agentd-bench-ctr-")
    d = DaemonProc(tmp, root).start()
    fs = CgroupFS(mount)
    outside = f"{root}-plain"
    agent = None
    try:
        agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "bench", "--", "sleep", "3600"], env=d.env,
                                 cwd=REPO)
        parent = f"{root}/agents/bench/containers"
        deadline = time.monotonic() + 20
        while not fs.exists(parent):
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.05)
        fs.mkdir(f"{parent}/fake")
        fs.mkdir(outside)
        enter = 'echo 0 > "$1/cgroup.procs" && exec true'
        times = {"agent": [], "plain": []}
        for _ in range(rounds):
            for name, cg in (("agent", f"{parent}/fake"), ("plain", outside)):
                t0 = time.monotonic()
                subprocess.run(["sh", "-c", enter, "sh", f"{mount}/{cg}"], check=True)
                times[name].append(time.monotonic() - t0)
        held = d.request({"op": "status"})["mode_details"]["containers"]
        a, b = statistics.median(times["agent"]), statistics.median(times["plain"])
        print(f"| | median |\n|---|---:|\n| enter + exec, agent's container (placed) | {a * 1e3:.2f} ms |\n"
              f"| enter + exec, plain cgroup | {b * 1e3:.2f} ms |\n| difference | {(a - b) * 1e3:.2f} ms |\n"
              f"| held stopped until placed (daemon), median / max | {held['hold_median_us'] / 1e3:.2f} / "
              f"{held['hold_max_us'] / 1e3:.2f} ms |\n({rounds} rounds, {held['exec_sessions']} sessions placed)")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(30)
        d.cleanup()
        kill_tree(fs, root)
        kill_tree(fs, outside)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--host", action="store_true", help="the stand-in runtime on this host")
    args = ap.parse_args()
    if args.host:
        return host(args.rounds)
    env = dict(os.environ, AGENTD_BENCH_CONTAINER_ROUNDS=str(args.rounds),
               AGENTD_KERNEL_TEST_TIMEOUT=str(max(240, 20 * args.rounds)))
    rc = subprocess.call([sys.executable, os.path.join(REPO, "tests", "kernel", "run.py"),
                          "tests/kernel/test_containers.py", "-k", "overhead"], env=env, cwd=REPO)
    runs = os.path.join(REPO, ".cache", "kernel", "runs")
    latest = max((os.path.join(runs, d) for d in os.listdir(runs)), key=os.path.getmtime, default=None)
    figures = os.path.join(latest, "figures.txt") if latest else None
    if figures and os.path.exists(figures):
        print(open(figures).read())
    return rc


if __name__ == "__main__":
    sys.exit(main())
