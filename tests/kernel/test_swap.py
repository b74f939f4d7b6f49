"""Swap per tool class through agentd, on a kernel with swap: a zram swap device is made
for the module. Two tool calls touch three times their memory.high: the one whose class
leaves swap_max at its default (0) is held in memory and never swaps (memory.swap.current
stays 0 while the kernel throttles it), the one whose class says `swap_max: max` is
swapped out under the same pressure, which shows the witness can tell the two apart.

And a paused call's memory goes to swap (the actuator's swap_out, as the ladder's freeze
uses it): under a shared memory.max, a second call that was OOM-killed beside the frozen
one completes once the frozen one's memory has gone to zram."""

import subprocess
import time

import pytest

from agentd.enforce.actuator import Actuator
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


class _Events:
    def __init__(self):
        self.got = []

    def emit(self, kind, **fields):
        self.got.append((kind, fields))


def test_a_paused_calls_memory_goes_to_swap_and_the_call_beside_it_completes(cgtree, cgfs, hog, state, zram_swap,
                                                                               figure):
    """Two calls under one 160 MiB memory.max, both with memory.swap.max 0 (the class's
    default). One holds 96 MiB and is frozen: a second 96 MiB call beside it is OOM-killed
    (the frozen one is kept out of the OOM killer's reach, as agentd's order would keep the
    call the ladder chose to let go on). Its memory sent to swap (swap_out), the same call
    completes; swap_back puts memory.swap.max back to 0."""
    fs = cgfs
    fs.write(cgtree.name, "memory.max", str(160 * MiB))

    def call(name):
        cg = cgtree.child(name)
        fs.write(cg, "memory.swap.max", "0")
        if fs.has(cg, "memory.zswap.max"):
            fs.write(cg, "memory.zswap.max", "0")
        return cg

    paused_cg, first_cg, second_cg = call("paused"), call("first"), call("second")
    held, first, second = state(), state(), state()
    paused = cgtree.spawn(paused_cg, [hog, "alloc", "96", held.path])
    wait_for(lambda: held.value() >= 96, 120, "the paused call to hold 96 MiB", step=0.1)
    with open(f"/proc/{paused.pid}/oom_score_adj", "w") as f:
        f.write("-1000")
    fs.freeze(paused_cg)
    wait_for(lambda: fs.frozen(paused_cg), 10, "the call to freeze")

    # Before: frozen, it keeps every page (swap.max 0); the call beside it cannot fit.
    victim = cgtree.spawn(first_cg, [hog, "alloc", "96", first.path])
    victim.wait(timeout=120)
    assert fs.read_flat_keyed(first_cg, "memory.events")["oom_kill"] >= 1
    assert first.value() < 96, "the first call fitted beside the frozen one: the test shows nothing"
    assert fs.read_int(paused_cg, "memory.swap.current") == 0

    act = Actuator(fs, _Events())
    before_current = fs.read_int(paused_cg, "memory.current")
    saved, before, after, swapped = act.swap_out("tool t/paused", paused_cg, before_current, "test")
    assert saved["memory.swap.max"] == "0"
    assert fs.read(paused_cg, "memory.swap.max").strip() == "max"
    assert after <= before // 2, f"memory.current {before} -> {after}: the paused call's memory stayed"
    assert fs.read_int(paused_cg, "memory.swap.current") >= 48 * MiB

    # After: the same call beside it runs to its end (96 MiB touched), nothing killed.
    cgtree.spawn(second_cg, [hog, "alloc", "96", second.path])
    wait_for(lambda: second.value() >= 96, 120, "the second call to touch its 96 MiB", step=0.1)
    assert fs.read_flat_keyed(second_cg, "memory.events")["oom_kill"] == 0
    figure("paused call's memory.current before / after swap_out", f"{before / MiB:.1f} / {after / MiB:.1f}", "MiB")
    figure("paused call's memory.swap.current", f"{fs.read_int(paused_cg, 'memory.swap.current') / MiB:.1f}", "MiB")

    act.swap_back("tool t/paused", paused_cg, saved, "test")
    assert fs.read(paused_cg, "memory.swap.max").strip() == "0"
    fs.freeze(paused_cg, frozen=False)
    wait_for(lambda: not fs.frozen(paused_cg), 10, "the call to thaw")
    assert paused.poll() is None, "the paused call died"
