"""A HIGH agent's small disk reads while a LOW agent writes a large file: no control vs agentd.

    python3 bench/disk.py --vm [--seconds 10] [--low 20MiB/s]   # in the kernel tier's VM (io controller)
    python3 bench/disk.py --guest OUT ...                        # inside it (what --vm runs)

The disk is a loop device with ext4 made for the run. The HIGH agent does what `git status`
does to a cold tree, over and over: a round stats and reads 50 small files (4 KiB each, of
a tree of 1000), every read with O_DIRECT so that each one goes to the disk (no page cache
between; the same as after drop_caches, without dropping the writer's pages too). The LOW
agent writes a 128 MiB file with O_DIRECT in 1 MiB writes, again and again (the loop device's
image lives in the guest's memory).

Runs, side by side in one guest boot:
- idle:    the HIGH agent alone (what a read costs on a quiet disk);
- none:    both as plain processes;
- weights: a private daemon; both under `agentd run`; the policy gives the HIGH agent's
           class io.weight 400 and the LOW agent's 25, names the disk in io.devices, and
           agentd turns iocost on for it;
- max:     as weights, and the LOW agent's class has io.max wbps `--low`.
Prints per-read and per-round latency (p50 / p99), the LOW agent's write rate, and the
ratios none / agentd; removes the loop device, its file system and every cgroup it made.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1 << 20

# argv: tree, seconds. Rounds of 50 files (stat + one O_DIRECT 4 KiB read each), cycling
# through the tree; prints {"reads": [ms], "rounds": [ms]} as JSON.
READER = r"""
import json, mmap, os, sys, time
tree, secs = sys.argv[1], float(sys.argv[2])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs)
buf = mmap.mmap(-1, 4096)
reads, rounds, i = [], [], 0
end = time.monotonic() + secs
while time.monotonic() < end:
    r0 = time.monotonic()
    for _ in range(50):
        p = files[i % len(files)]; i += 1
        t0 = time.monotonic()
        os.stat(p)
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [buf], 0)
        finally:
            os.close(fd)
        reads.append((time.monotonic() - t0) * 1000)
    rounds.append((time.monotonic() - r0) * 1000)
print(json.dumps({"reads": reads, "rounds": rounds}))
"""

# argv: path, seconds. 1 MiB O_DIRECT writes over a 128 MiB file, again and again; prints bytes/s.
WRITER = r"""
import mmap, os, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
buf = mmap.mmap(-1, 1 << 20); buf.write(b"x" * (1 << 20))
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
n, off, t0 = 0, 0, time.monotonic()
end = t0 + secs
while time.monotonic() < end:
    n += os.pwritev(fd, [buf], off)
    off = (off + (1 << 20)) % (128 << 20)
os.close(fd)
print(n / (time.monotonic() - t0))
"""

POLICY = """\
version: 1
agent_classes:
  normal: {{}}
  high: {{priority: 800, io: {{weight: 400}}}}
  low: {{priority: 100, io: {{weight: 25{low}}}}}
io: {{devices: [{mnt}]}}
admission: {{enabled: false}}
pressure: {{memory_watch: false}}
detection: {{enabled: false}}
cpu: {{scheduler: weights}}
"""


def sh(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr or r.stdout}")
    return r.stdout.strip()


class LoopDisk:
    """512 MiB ext4 on a loop device, mounted; a tree of 1000 files of 4 KiB."""

    def __init__(self, tmp):
        self.img, self.mnt = os.path.join(tmp, "disk.img"), os.path.join(tmp, "mnt")
        os.mkdir(self.mnt)
        subprocess.run(["modprobe", "loop"], capture_output=True)
        with open(self.img, "wb") as f:
            f.truncate(512 * MiB)
        self.dev = sh("losetup", "--find", "--show", self.img)
        try:
            sh("mkfs.ext4", "-q", "-F", self.dev)
            sh("mount", "-o", "discard", self.dev, self.mnt)
            self.tree = os.path.join(self.mnt, "repo")
            for i in range(1000):
                d = os.path.join(self.tree, f"d{i // 50:02d}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"f{i:04d}.txt"), "wb") as f:
                    f.write(os.urandom(4096))
            os.sync()
        except BaseException:
            self.close()
            raise

    def close(self):
        subprocess.run(["umount", self.mnt], capture_output=True)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


def run_pair(disk, secs, wrap_high, wrap_low, env=None):
    """(reader's result, writer's bytes/s or None); wrap_low None: the reader alone."""
    low = None
    if wrap_low is not None:
        low = subprocess.Popen(wrap_low + [sys.executable, "-S", "-c", WRITER, os.path.join(disk.mnt, "big"),
                                           str(secs + 2)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=REPO)
        time.sleep(1.5)              # the writer has the disk busy first
    high = subprocess.run(wrap_high + [sys.executable, "-S", "-c", READER, disk.tree, str(secs)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=secs + 300)
    rate = None
    if low is not None:
        out, err = low.communicate(timeout=secs + 300)
        if low.returncode:
            raise RuntimeError(f"the LOW writer failed: {err[-800:]}")
        rate = float(out.strip().splitlines()[-1])
    if high.returncode:
        raise RuntimeError(f"the HIGH reader failed: {high.stderr[-800:]}")
    return json.loads(high.stdout.strip().splitlines()[-1]), rate


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def guest_main(a):
    from agentd.kernel import blkio
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    from tests.helpers import DaemonProc, agentd_cmd, kill_tree
    fs = CgroupFS(find_cgroup2_mount())
    fs.enable_controllers("", ("memory", "cpu", "pids", "io"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="agentd-bench-disk-") as tmp:
        disk = LoopDisk(tmp)
        try:
            dev = blkio.resolve(disk.mnt).dev
            results["idle"] = run_pair(disk, a.seconds, [], None)
            results["none"] = run_pair(disk, a.seconds, [], [])
            for mode, low in (("weights", ""), ("max", f", wbps: {a.low}")):
                d = DaemonProc(tmp, f"agentd-bench-disk-{os.getpid()}-{mode}",
                               policy=_policy(tmp, mode, POLICY.format(low=low, mnt=disk.mnt)))
                d.start(timeout=300)
                try:
                    qos = fs.read("", blkio.IO_COST_QOS) if fs.has("", blkio.IO_COST_QOS) else ""
                    run = agentd_cmd() + ["run"]
                    results[mode] = run_pair(disk, a.seconds, run + ["--class", "high", "--"],
                                             run + ["--class", "low", "--"], env=d.env)
                    results[mode + "_iocost"] = blkio.parse_keyed_lines(qos).get(dev, {}).get("enable")
                finally:
                    d.cleanup()
                    kill_tree(fs, d.root)
        finally:
            disk.close()
    Path(a.guest, "result.json").write_text(json.dumps(results))


def _policy(tmp, mode, text):
    p = os.path.join(tmp, f"policy-{mode}.yaml")
    Path(p).write_text(text)
    return p


def report(results, a):
    rows = {}
    for m in ("idle", "none", "weights", "max"):
        r, rate = results[m]
        rows[m] = {"read_p50_ms": pct(r["reads"], 0.5), "read_p99_ms": pct(r["reads"], 0.99),
                   "round_p50_ms": pct(r["rounds"], 0.5), "round_p99_ms": pct(r["rounds"], 0.99),
                   "rounds": len(r["rounds"]), "low_mib_s": None if rate is None else rate / MiB}
    print(f"loop device, ext4, 7.3 VM (QEMU TCG, 2 vCPUs); {a.seconds:g} s per run; HIGH: rounds of 50 "
          f"stat + 4 KiB O_DIRECT reads; LOW: 1 MiB O_DIRECT writes; max: LOW's wbps {a.low}; "
          f"iocost on during weights/max: {results.get('weights_iocost')}/{results.get('max_iocost')}")
    print(f"{'run':<9}{'rounds':>7}{'read p50':>10}{'read p99':>10}{'round p50':>11}{'round p99':>11}"
          f"{'LOW MiB/s':>11}")
    for m, r in rows.items():
        low = "" if r["low_mib_s"] is None else f"{r['low_mib_s']:.1f}"
        print(f"{m:<9}{r['rounds']:>7}{r['read_p50_ms']:>10.2f}{r['read_p99_ms']:>10.2f}{r['round_p50_ms']:>11.1f}"
              f"{r['round_p99_ms']:>11.1f}{low:>11}")
    for m in ("weights", "max"):
        print(f"none / {m}: read p50 {rows['none']['read_p50_ms'] / rows[m]['read_p50_ms']:.1f}x, "
              f"p99 {rows['none']['read_p99_ms'] / rows[m]['read_p99_ms']:.1f}x; round p50 "
              f"{rows['none']['round_p50_ms'] / rows[m]['round_p50_ms']:.1f}x, "
              f"p99 {rows['none']['round_p99_ms'] / rows[m]['round_p99_ms']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": rows}, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vm", action="store_true", help="run in the kernel tier's VM (the io controller is there)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--low", default="20MiB/s", help="the LOW agent's class io.max wbps in the `max` run")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--out", help="(--vm) folder for the guest's logs")
    ap.add_argument("--timeout", type=int, default=1500, help="(--vm) seconds for the whole guest run")
    ap.add_argument("--guest", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.guest:
        return guest_main(a)
    if not a.vm:
        sys.exit("bench/disk.py runs in the kernel tier's VM (--vm): this host has no io controller on cgroup v2")
    from bench.replay.vm import boot_in_vm
    out = a.out or tempfile.mkdtemp(prefix="disk-", dir=REPO / ".cache")
    os.makedirs(out, exist_ok=True)
    inner = [sys.executable, str(Path(__file__).resolve()), "--guest", out, "--seconds", str(a.seconds),
             "--low", a.low]
    status = boot_in_vm("sh -c " + shlex.quote("echo +memory +cpu +pids +io > /sys/fs/cgroup/cgroup.subtree_control; "
                                               + " ".join(shlex.quote(x) for x in inner)), out, "2G", a.timeout)
    result = Path(out, "result.json")
    if status != 0 or not result.exists():
        log = Path(out, "guest.log")
        sys.exit(f"disk: the guest run failed (status {status}); see {out}\n"
                 + (log.read_text()[-3000:] if log.exists() else ""))
    report(json.loads(result.read_text()), a)


if __name__ == "__main__":
    main()
