#!/usr/bin/env python3
"""Per-call overhead of agentd's container path next to a plain `podman exec`, side by side
in one boot of the kernel-tier VM (rootful podman needs full cgroup v2).

    python3 bench/containers.py [--rounds N]

Runs tests/kernel/test_containers.py::test_exec_overhead_side_by_side with N rounds: each
round times `podman exec C true` into a container under an agent (the exec is stopped at
exec by the lifecycle program, placed in a tool call of its own and resumed) and into a
container podman placed itself, alternately; it prints the medians and their difference.
Under QEMU software emulation every process start is ~100x slower than on hardware:
compare the two columns, not the absolute times.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
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
