"""Disk I/O through agentd on a real block device: a loop device with an ext4 file system is
made for the module, and the policy names it by a path on that file system (the resolver
takes it to the loop device's major:minor).

- io.max: a tool call whose class sets `wbps` writes with O_DIRECT (no page cache between
  it and the disk) at that rate, within 15%, for 5 and 20 MiB/s; an unlimited call beside
  them shows the device is faster than both, so the limit is what held them.
- io.max per disk: a second loop device; a class with `wbps: {disk: 5MiB/s, other: 20MiB/s}`
  writes to each at its own rate, within 15%.
- io.weight: the daemon writes each agent's class weight and turns iocost on for the disk
  (io.cost.qos) so that the weights count. iocost shares a disk by weight once the disk is
  saturated by its own measure (latencies past its targets); a loop device whose image is
  in memory never is, so the test gives iocost the capacity of a 40 MiB/s disk (a fixed
  cost model and rate, as an administrator sets for a known disk): two agents writing at
  once then share it by their weights.
"""

import os
import re
import subprocess
import time

import pytest

from agentd.kernel import blkio

from tests.helpers import REPO, agentd_cmd

from .kernel_support import running_daemon, stop, wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20

POLICY = """\
version: 1
agent_classes:
  normal: {{}}
  high: {{priority: 800, io: {{weight: 400}}}}
  low: {{priority: 100, io: {{weight: 25}}}}
tool_classes:
  normal: {{priority: 50}}
  w5: {{priority: 50, io: {{wbps: 5MiB/s}}}}
  w20: {{priority: 50, io: {{wbps: 20MiB/s}}}}
  split: {{priority: 50, io: {{wbps: {{{mnt}: 5MiB/s, {mnt2}: 20MiB/s}}}}}}
io: {{devices: [{mnt}, {mnt2}]}}
admission: {{enabled: false}}
pressure: {{memory_watch: false}}
detection: {{enabled: false}}
cpu: {{scheduler: weights}}
"""

DD_RE = re.compile(r"^(\d+) bytes .* copied, ([\d.]+) s", re.MULTILINE)


def _run(*cmd):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr or r.stdout}"
    return r.stdout.strip()


def _loop_disk(tmp_path_factory, size):
    """(loop device, mount point): `size` of ext4 on a loop device, gone afterwards. A guest
    without the loop module fails here, saying so (a skip would hide that nothing ran).
    The image lives in the guest's /tmp, which is memory: mounted with discard, so that a
    file removed gives its blocks back to it."""
    tmp = tmp_path_factory.mktemp("io")
    img, mnt = tmp / "disk.img", tmp / "mnt"
    mnt.mkdir()
    subprocess.run(["modprobe", "loop"], capture_output=True)
    with open(img, "wb") as f:
        f.truncate(size)
    dev = _run("losetup", "--find", "--show", str(img))
    try:
        _run("mkfs.ext4", "-q", "-F", dev)
        _run("mount", "-o", "discard", dev, str(mnt))
        os.chmod(mnt, 0o777)
        try:
            yield dev, str(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    yield from _loop_disk(tmp_path_factory, 384 * MiB)


@pytest.fixture(scope="module")
def disk2(tmp_path_factory):
    """A second disk, for maxima per disk."""
    yield from _loop_disk(tmp_path_factory, 128 * MiB)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cgfs, disk, disk2):
    """The daemon with the io classes, started outside the test's own time limit."""
    with running_daemon(cgfs, tmp_path_factory.mktemp("iod"), "io", POLICY.format(mnt=disk[1], mnt2=disk2[1])) as d:
        yield d


def _dev_of(disk):
    st = os.stat(disk[0])
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _agent(d, name, script, *args, agent_class=None):
    front = agentd_cmd()
    cls = ["--class", agent_class] if agent_class else []
    return subprocess.Popen(front + ["run", "--name", name] + cls + ["--", "bash", "-c", script, name, front[0]]
                            + list(args), env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_io_max_holds_a_tool_calls_direct_writes_to_its_class_rate(tmp_path, daemon, disk, figure):
    d, mnt = daemon, disk[1]
    dev = _dev_of(disk)
    # One call after another, so that each has the disk to itself: unlimited, 5 MiB/s, 20 MiB/s.
    # dd's own figure (bytes over the time from its first write to its last) is the rate.
    script = ('for spec in normal:48 w5:24 w20:64; do c=${spec%:*}; n=${spec#*:}; '
              '"$1" tool --class $c -- dd if=/dev/zero of="$2/f-$c" bs=1M count=$n oflag=direct 2> "$3/dd-$c" '
              '|| exit 1; rm -f "$2/f-$c"; done')
    agent = _agent(d, "wr", script, mnt, str(tmp_path))
    try:
        out, err = agent.communicate(timeout=200)
        assert agent.returncode == 0, f"agent failed: {out}{err}"
    finally:
        stop(agent)
    rates = {}
    for c in ("normal", "w5", "w20"):
        text = (tmp_path / f"dd-{c}").read_text()
        m = DD_RE.search(text)
        assert m, f"no dd summary for {c}: {text}"
        rates[c] = int(m.group(1)) / float(m.group(2)) / MiB
        figure(f"O_DIRECT write rate, class {c}", f"{rates[c]:.2f}", "MiB/s")
    starts = {e["tool_class"]: e for e in d.events() if e.get("event") == "tool_start" and e.get("agent") == "wr"}
    # One line per disk the policy names (two here): this disk's holds the class's rate.
    assert f"{dev} rbps=max wbps={5 * MiB} riops=max wiops=max" in starts["w5"]["limits"][blkio.IO_MAX].splitlines()
    assert f"{dev} rbps=max wbps={20 * MiB} riops=max wiops=max" in starts["w20"]["limits"][blkio.IO_MAX].splitlines()
    assert blkio.IO_MAX not in starts["normal"]["limits"]
    assert rates["normal"] > 1.3 * 20, f"the disk itself writes only {rates['normal']:.1f} MiB/s: nothing to limit"
    for c, limit in (("w5", 5), ("w20", 20)):
        assert abs(rates[c] - limit) <= 0.15 * limit, f"class {c}: {rates[c]:.2f} MiB/s, limit {limit} MiB/s"


def test_io_max_per_disk_holds_each_disks_writes_to_its_own_rate(tmp_path, daemon, disk, disk2, figure):
    d = daemon
    # One call of class split writes to the first disk, then to the second.
    script = ('"$1" tool --class split -- sh -c \'dd if=/dev/zero of="$0/f" bs=1M count=24 oflag=direct '
              '2> "$2/dd-1" && dd if=/dev/zero of="$1/f" bs=1M count=64 oflag=direct 2> "$2/dd-2"; '
              'rc=$?; rm -f "$0/f" "$1/f"; exit $rc\' "$2" "$3" "$4"')
    agent = _agent(d, "split", script, disk[1], disk2[1], str(tmp_path))
    try:
        out, err = agent.communicate(timeout=200)
        assert agent.returncode == 0, f"agent failed: {out}{err}"
    finally:
        stop(agent)
    start = next(e for e in d.events() if e.get("event") == "tool_start" and e.get("agent") == "split")
    lines = start["limits"][blkio.IO_MAX].splitlines()
    assert sorted(lines) == sorted([f"{_dev_of(disk)} rbps=max wbps={5 * MiB} riops=max wiops=max",
                                    f"{_dev_of(disk2)} rbps=max wbps={20 * MiB} riops=max wiops=max"]), lines
    for n, limit in ((1, 5), (2, 20)):
        text = (tmp_path / f"dd-{n}").read_text()
        m = DD_RE.search(text)
        assert m, f"no dd summary for disk {n}: {text}"
        rate = int(m.group(1)) / float(m.group(2)) / MiB
        figure(f"O_DIRECT write rate, class split, disk {n} (limit {limit} MiB/s)", f"{rate:.2f}", "MiB/s")
        assert abs(rate - limit) <= 0.15 * limit, f"disk {n}: {rate:.2f} MiB/s, limit {limit} MiB/s"


IO_COST_MODEL = "io.cost.model"


@pytest.fixture
def disk_of_40mib(cgfs, disk, daemon):
    """iocost's view of the loop device (iocost on, by the daemon): a disk of 40 MiB/s (a
    linear cost model, its rate held at 100%); the kernel's automatic ones come back after."""
    dev = _dev_of(disk)
    cgfs.write("", IO_COST_MODEL, f"{dev} ctrl=user model=linear rbps={40 * MiB} rseqiops=1000000 "
                                  f"rrandiops=1000000 wbps={40 * MiB} wseqiops=1000000 wrandiops=1000000")
    cgfs.write("", blkio.IO_COST_QOS, f"{dev} ctrl=user min=100.00 max=100.00")
    try:
        yield
    finally:
        cgfs.write("", blkio.IO_COST_QOS, f"{dev} ctrl=auto")
        cgfs.write("", IO_COST_MODEL, f"{dev} ctrl=auto")


def test_agents_share_a_disk_by_their_class_io_weight(tmp_path, daemon, disk, cgfs, disk_of_40mib, figure):
    d, mnt = daemon, disk[1]
    # iocost was off on the fresh loop device: the daemon turned it on, since weights count only there.
    assert blkio.iocost_enabled(cgfs, _dev_of(disk)), cgfs.read("", blkio.IO_COST_QOS)
    # Each agent writes O_DIRECT as fast as it may, until stopped, both at once: the same
    # 32 MiB again and again (the disk lives in the guest's memory).
    script = ('"$1" tool -- sh -c \'while :; do dd if=/dev/zero of="$0" bs=256k count=128 oflag=direct '
              'conv=notrunc 2>/dev/null || exit 1; done\' "$2/w-$0"')
    hi = lo = None
    try:
        hi = _agent(d, "hi", script, mnt, agent_class="high")
        lo = _agent(d, "lo", script, mnt, agent_class="low")

        def cgroup(name):
            a = next((a for a in d.request({"op": "status"})["agents"] if a["agent"] == name), None)
            return a["cgroup"] if a and a.get("tools") else None
        wait_for(lambda: cgroup("hi") and cgroup("lo"), 120, "both writers to start", step=0.2)
        hi_cg, lo_cg = cgroup("hi"), cgroup("lo")
        assert cgfs.read(hi_cg, blkio.IO_WEIGHT).split("\n")[0] == "default 400"
        assert cgfs.read(lo_cg, blkio.IO_WEIGHT).split("\n")[0] == "default 25"

        def written(cg):
            return blkio.stat_totals(cgfs.read(cg, blkio.IO_STAT))["wbytes"]
        # Both have written something before the window opens: neither is still starting.
        wait_for(lambda: written(hi_cg) > 4 * MiB and written(lo_cg) > 0, 120, "both to write", step=0.2)
        # Weights share a disk only while it is busy: iocost lets every writer have what it
        # asks below the disk's rate. A guest starved of CPU by other VMs on the host may not
        # keep the 40 MiB/s disk busy (once the two wrote 74 MiB/s less than here): judge only
        # windows in which the disk carried at least 75% of its rate, and fail if none did.
        windows, carried = [], []
        before = written(hi_cg), written(lo_cg)
        while len(carried) < 3 and len(windows) < 6:
            time.sleep(3.0)
            after = written(hi_cg), written(lo_cg)
            w = ((after[0] - before[0]) / MiB, (after[1] - before[1]) / MiB)
            windows.append(w)
            if sum(w) >= 0.75 * 40 * 3.0:
                carried.append(w)
            before = after
        assert hi.poll() is None and lo.poll() is None, "a writer ended inside the window"
    finally:
        stop(hi)
        stop(lo)
    assert carried, f"the disk never carried 75% of its 40 MiB/s in a 3-s window (MiB high, low): {windows}"
    hw, lw = sum(h for h, _ in carried) / len(carried), sum(low for _, low in carried) / len(carried)
    figure("high agent (weight 400) wrote", f"{hw:.1f}", "MiB per 3 s (mean of the busy windows)")
    figure("low agent (weight 25) wrote", f"{lw:.1f}", "MiB per 3 s (mean of the busy windows)")
    figure("busy windows / windows", f"{len(carried)} / {len(windows)}")
    figure("high:low write ratio", f"{hw / max(lw, 1e-9):.2f}")
    assert hw > 2 * lw, f"high wrote {hw:.1f} MiB, low {lw:.1f} MiB per busy 3 s: the weights did not share the disk"
