"""The kernel OOM killer follows agentd's order (agentd/oom.py) under a real budget.

A parent cgroup with memory.max = 256 MiB holds agentd's root, as a slice or a container
would. A high-priority agent's tool call holds 100 MiB; a low-priority agent holds 80 MiB in
its own process; then the low agent's tool call grows until the budget runs out. The
kernel alone would kill the biggest process, the high agent's call. With agentd's
oom_score_adj values the victim is the low agent's tool call, the whole call
(memory.oom.group), and both agents and the high call live on. The policy keeps the
ladder out of it (no memory watch, a PSI trigger that cannot fire in time), so the
kernel's choice is what is tested; the daemon also sizes itself from the parent's
memory.max.
"""

import os
import signal
import subprocess
import time

import pytest

from agentd import oom
from agentd.policy.loader import load_policy_text
from tests.helpers import REPO, DaemonProc, agentd_cmd

from .kernel_support import State, wait_for

pytestmark = pytest.mark.kernel
MiB = 1 << 20
BUDGET = 256 * MiB

POLICY = """\
version: 1
defaults: {agent_class: low}
agent_classes:
  high: {priority: 800}
  low: {priority: 100}
admission: {enabled: false}
detection: {enabled: false}
cpu: {scheduler: weights}
# The ladder stays out of the kernel's way: no memory watch, and a PSI trigger that fires
# only after 10 s of stall in 10 s. (A dry run would not do: it sets no OOM order either.)
pressure: {memory_watch: false, psi_some_threshold_us: 10000000, psi_window_us: 10000000}
"""


@pytest.fixture
def budget_daemon(tmp_path, cgfs):
    parent = f"agentd-test-{os.getpid()}-oom"
    cgfs.enable_controllers("", ("memory", "cpu", "pids"))
    cgfs.mkdir(parent, exist_ok=False)
    (tmp_path / "policy.yaml").write_text(POLICY)
    d = DaemonProc(str(tmp_path), f"{parent}/agentd", policy=str(tmp_path / "policy.yaml"))
    try:
        cgfs.enable_controllers(parent, ("memory", "cpu", "pids"))
        cgfs.write(parent, "memory.max", str(BUDGET))
        d.start(timeout=300)
        yield d, parent
    finally:
        d.cleanup()
        if cgfs.exists(parent):
            cgfs.kill(parent)
            cgfs.wait_empty(parent, 30)
            cgfs.remove_tree(parent)


def agent(d, name, cls, script, *args):
    return subprocess.Popen(agentd_cmd() + ["run", "--name", name, "--class", cls, "--", "bash", "-c", script,
                                            "agent", *args], env=d.env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_oom_killer_takes_the_low_agents_call_not_an_agent_or_the_high_call(budget_daemon, hog, tmp_path, cgfs):
    d, parent = budget_daemon
    assert "memory agentd manages: 268435456 bytes (memory.max of " + parent in d.log()
    hi_state, lo_main_state, lo_tool_state = (State(tmp_path / n) for n in ("hi", "lomain", "lotool"))
    front = agentd_cmd()
    # high: one tool call that holds 100 MiB and sleeps
    hi = agent(d, "hi", "high", '"${@:3}" tool -- "$1" alloc 100 "$2"; echo "tool=$?"', hog, hi_state.path, *front)
    wait_for(lambda: hi_state.value() >= 100, 120, "the high agent's call to hold 100 MiB")
    # low: the agent's own process holds 80 MiB (a child of the agent, not a tool call),
    # then, once it does, its tool call grows past what is left
    go = tmp_path / "go"
    lo = agent(d, "lo", "low", '"$1" alloc 80 "$2" & h=$!; while [ ! -e "$4" ]; do sleep 0.1; done; '
               '"${@:5}" tool -- "$1" alloc 400 "$3"; echo "tool=$?"; kill $h',
               hog, lo_main_state.path, lo_tool_state.path, str(go), *front)
    wait_for(lambda: lo_main_state.value() >= 80, 120, "the low agent to hold 80 MiB")
    go.touch()
    try:
        out, err = lo.communicate(timeout=240)
        assert lo.returncode == 0, err
        assert "tool=137" in out, (out, err)            # the low call was SIGKILLed ...
        assert lo_tool_state.value() < 100              # ... by the OOM killer, on its way up
        ev = d.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "lo", timeout=60)
        assert ev["memory_events"]["oom_kill"] >= 1 and ev["outcome"] in ("oom_killed", "killed")
        assert lo_main_state.value() >= 80              # the low agent's own 80 MiB lived on
        assert hi.poll() is None                        # the high agent and its call too
        assert hi_state.value() >= 100
        tools = d.request({"op": "status"})
        hi_tools = [t for a in tools["agents"] if a["agent"] == "hi" for t in a["tools"]]
        assert len(hi_tools) == 1
        cg = f"{d.root}/agents/hi/tools/{hi_tools[0]['tool']}"
        assert cgfs.read(cg, "memory.oom.group").strip() == "1"
        pids = cgfs.procs(cg)
        normal = load_policy_text(POLICY, "t.yaml").tool_class().priority
        assert {int(open(f"/proc/{p}/oom_score_adj").read()) for p in pids} == {oom.tool_adj(800, normal)}
    finally:
        for p in (hi, lo):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)
        time.sleep(0.1)


# A tool call that tries to go back below its value. Builtins only (`read`, `echo`, a
# `{ }` group), so /proc/self is the call's own shell throughout: no fork, no exec.
LOWER = ('read -r v </proc/self/oom_score_adj; echo "before=$v"; '
         '{ echo -800 >/proc/self/oom_score_adj; } 2>/dev/null; echo "rc=$?"; '
         'read -r v </proc/self/oom_score_adj; echo "after=$v"; '
         'while read -r k v; do if [ "$k" = CapEff: ]; then echo "capeff=$v"; fi; done </proc/self/status')


def test_a_tool_call_cannot_lower_its_oom_score_adj_to_its_agents(budget_daemon):
    """The agent runs as root without CAP_SYS_RESOURCE (a sandbox's or a container's
    default), so its launcher may clone its call straight into the cgroup but its own write
    of the call's value cannot pin the call's floor: the floor stays the agent's -800 and
    the call could take itself out of the killer's order. The daemon writes the value
    itself, which pins the floor: the call's attempt to go back to -800 is refused."""
    d, _ = budget_daemon
    r = subprocess.run(agentd_cmd() + ["run", "--name", "nocap", "--class", "low", "--",
                                       "setpriv", "--bounding-set=-sys_resource", "--inh-caps=-sys_resource",
                                       "bash", "-c", '"$@" tool -- sh -c \'' + LOWER + '\'', "agent", *agentd_cmd()],
                       env=d.env, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, (r.stdout, r.stderr)
    got = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert not int(got["capeff"], 16) & (1 << 24), got            # the call really lacks it
    normal = load_policy_text(POLICY, "t.yaml").tool_class().priority
    value = oom.tool_adj(100, normal)
    assert int(got["before"]) == value, got
    assert got["rc"] != "0" and int(got["after"]) == value, got
