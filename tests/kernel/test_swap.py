"""Swap per tool class through agentd, on a kernel with swap: a zram swap device is made
for the module. Two tool calls touch three times their memory.high: the one whose class
leaves swap_max at its default (0) is held in memory and never swaps (memory.swap.current
stays 0 while the kernel throttles it), the one whose class says `swap_max: max` is
swapped out under the same pressure, which shows the witness can tell the two apart."""

import subprocess
import time

import pytest

from tests.helpers import REPO, agentd_cmd

from .kernel_support import State, running_daemon, stop, wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20
ZRAM = "/sys/block/zram0"

POLICY = """\
version: 1
agent_classes:
  normal: {}
tool_classes:
  normal: {priority: 50}
  held: {priority: 50, forecast: false, memory: {high: 32Mi}}
  swappy: {priority: 50, forecast: false, memory: {high: 32Mi, swap_max: max}}
admission: {enabled: false}
pressure: {memory_watch: false, steps: [throttle]}
detection: {enabled: false}
cpu: {scheduler: weights}
"""


def _run(*cmd):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr or r.stdout}"


@pytest.fixture(scope="module")
def zram_swap():
    """256 MiB of swap on zram, removed afterwards. The tier's kernel has the module; a
    guest without it fails here, saying so (a skip would hide that nothing was tested)."""
    _run("modprobe", "zram", "num_devices=1")
    try:
        with open(f"{ZRAM}/disksize", "w") as f:
            f.write(str(256 * MiB))
        _run("mkswap", "/dev/zram0")
        _run("swapon", "/dev/zram0")
        yield
    finally:
        subprocess.run(["swapoff", "/dev/zram0"], capture_output=True)
        try:
            with open(f"{ZRAM}/reset", "w") as f:
                f.write("1")
        except OSError:
            pass
        subprocess.run(["rmmod", "zram"], capture_output=True)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cgfs, zram_swap):
    """The daemon with the swap classes, started outside the test's own time limit (a
    daemon costs 30-60 s to start under emulation)."""
    with running_daemon(cgfs, tmp_path_factory.mktemp("swap"), "swap", POLICY) as d:
        yield d


def test_a_tool_call_does_not_swap_unless_its_class_allows_it(tmp_path, daemon, cgfs, hog, figure):
    d = daemon
    held, swappy = State(tmp_path / "held"), State(tmp_path / "swappy")
    front = agentd_cmd()
    agent = None
    try:
        script = ('"$1" tool --class held -- "$2" alloc 96 "$3" & "$1" tool --class swappy -- "$2" alloc 96 "$4" & '
                  'wait')
        # The scripts call the same front as test_agentd_limits.py's agents ($AGENTD there).
        agent = subprocess.Popen(front + ["run", "--name", "sw", "--", "bash", "-c", script, "sw", front[0], hog,
                                          held.path, swappy.path],
                                 env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def call(cls):
            a = next((a for a in d.request({"op": "status"})["agents"] if a["agent"] == "sw"), None)
            t = next((t for t in (a or {}).get("tools", ()) if t["tool_class"] == cls), None)
            return None if t is None else f"{a['cgroup']}/tools/{t['tool']}"
        wait_for(lambda: call("held") and call("swappy"), 120, "both tool calls to start", step=0.2)
        held_cg, swappy_cg = call("held"), call("swappy")
        # The swappy call past its memory.high is swapped out: the kernel's own counter.
        wait_for(lambda: cgfs.read_int(swappy_cg, "memory.swap.current") > 8 * MiB, 90,
                 "the swappy call to be swapped out", step=0.2)
        # The held call stands at its memory.high by now too: throttled, not swapped.
        wait_for(lambda: cgfs.read_flat_keyed(held_cg, "memory.events")["high"] > 0, 60,
                 "the held call to reach its memory.high", step=0.2)
        time.sleep(2.0)           # the same pressure, a while longer
        assert cgfs.read(held_cg, "memory.swap.max").strip() == "0"
        assert cgfs.read(swappy_cg, "memory.swap.max").strip() == "max"
        if cgfs.has(held_cg, "memory.zswap.max"):
            assert cgfs.read(held_cg, "memory.zswap.max").strip() == "0"
        held_swap = cgfs.read_int(held_cg, "memory.swap.current")
        assert held_swap == 0, f"the held call swapped {held_swap} bytes"
        start = next(e for e in d.events() if e.get("event") == "tool_start" and e.get("tool_class") == "held")
        assert start["limits"]["memory.swap.max"] == "0"
        figure("swappy call's swap", f"{cgfs.read_int(swappy_cg, 'memory.swap.current') / MiB:.1f}", "MiB")
        figure("held call's memory.current", f"{cgfs.read_int(held_cg, 'memory.current') / MiB:.1f}", "MiB")
        figure("held call's MiB touched", held.value(), "MiB")
    finally:
        stop(agent)
