"""Idle agents' memory reclaimed into a zram swap (agentd/reclaim/), on the tier's kernel.

Two agents: one holds 64 MiB in its own process and runs no tool call (idle: it waits for
its model), the other runs a tool call that holds 64 MiB. The idle agent's memory.current
falls and its memory.swap.current rises (the kernel's own counters); at the same time the
running tool call keeps every page (its anonymous memory, no swap, memory.stat pgsteal 0), and
the busy agent's own cgroup is not reclaimed while its call runs."""

import subprocess

import pytest

from tests.helpers import REPO, agentd_cmd

from .kernel_support import State, running_daemon, stop, wait_for
from .test_swap import zram_swap  # noqa: F401  (the module's zram swap fixture)

pytestmark = pytest.mark.kernel

MiB = 1 << 20

POLICY = """\
version: 1
agent_classes:
  normal: {}
tool_classes:
  normal: {priority: 50, forecast: false}
admission: {enabled: false}
pressure: {memory_watch: false, steps: [throttle]}
detection: {enabled: false}
cpu: {scheduler: weights}
reclaim: {idle_s: 0.5, interval_s: 0.5, step_percent: 25}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cgfs, zram_swap):  # noqa: F811
    with running_daemon(cgfs, tmp_path_factory.mktemp("reclaim"), "reclaim", POLICY) as d:
        yield d


def test_an_idle_agent_is_reclaimed_into_zram_and_a_running_call_never_is(tmp_path, daemon, cgfs, hog, figure):
    d = daemon
    idle_state, call_state = State(tmp_path / "idle"), State(tmp_path / "call")
    front = agentd_cmd()
    idle = busy = None
    try:
        # The idle agent's own process holds 64 MiB (no tool call: nothing runs through agentd).
        idle = subprocess.Popen(front + ["run", "--name", "idle", "--", hog, "alloc", "64", idle_state.path],
                                env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The busy agent's tool call holds 64 MiB and runs until the test ends.
        busy = subprocess.Popen(front + ["run", "--name", "busy", "--", front[0], "tool", "--", hog, "alloc", "64",
                                         call_state.path],
                                env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def agent(name):
            return next((a for a in d.request({"op": "status"})["agents"] if a["agent"] == name), None)

        def call_cg():
            a = agent("busy")
            t = next(iter((a or {}).get("tools", ())), None)
            return None if t is None else f"{a['cgroup']}/tools/{t['tool']}"
        wait_for(lambda: call_cg() and call_state.value() >= 64, 120, "the busy agent's call to hold 64 MiB",
                 step=0.2)
        wait_for(lambda: agent("idle") is not None, 60, "the idle agent to register", step=0.2)
        call, busy_main = call_cg(), f"{agent('busy')['cgroup']}/main"
        idle_main = f"{agent('idle')['cgroup']}/main"
        busy_main_before = cgfs.read_int(busy_main, "memory.current")
        assert cgfs.read_flat_keyed(call, "memory.stat")["anon"] >= 64 * MiB
        # The idle agent gives its memory back, into swap.
        wait_for(lambda: idle_state.value() >= 64 and cgfs.read_int(idle_main, "memory.current") < 24 * MiB,
                 120, "the idle agent's memory.current to fall under 24 MiB", step=0.5)
        swapped = cgfs.read_int(idle_main, "memory.swap.current")
        assert swapped > 32 * MiB, f"only {swapped} bytes of the idle agent in swap"
        # The running call kept every page, all the while: the kernel took none from it
        # (pgsteal counts every page reclaimed from the cgroup, file or anonymous).
        stat = cgfs.read_flat_keyed(call, "memory.stat")
        assert stat["anon"] >= 64 * MiB and stat["pgsteal"] == 0, stat
        assert cgfs.read_int(call, "memory.swap.current") == 0
        # Nor was the busy agent's own memory taken while its call ran.
        assert cgfs.read_int(busy_main, "memory.swap.current") == 0
        assert cgfs.read_int(busy_main, "memory.current") >= busy_main_before // 2
        figure("idle agent's memory.current after reclaim", f"{cgfs.read_int(idle_main, 'memory.current') / MiB:.1f}",
               "MiB")
        figure("idle agent's swap", f"{swapped / MiB:.1f}", "MiB")
    finally:
        stop(busy)
        stop(idle)
