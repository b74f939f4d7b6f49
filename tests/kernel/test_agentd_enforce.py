"""The enforcer in a real daemon on a kernel with the memory controller:
- every PSI trigger event of a sustained stall reaches the daemon's event loop;
- a real hog drives the PSI trigger and the ladder throttles, freezes and kills the
  lowest-priority tool call in that order, leaving the higher-priority call and the agent;
- a tool call that grows fast toward the end of the guest's memory is acted on through the
  BPF memory watch before the kernel's OOM killer acts (no OOM kill at all);
- admission control makes a call wait until a running call frees its memory;
- `agentd tool` under memory.max is OOM-killed as a tool call, told why in one sentence,
  and the agent's main process and the daemon survive;
- a call held at the memory.high agentd gave it stalls, and that stall is not taken for a
  shortage: the ladder leaves the call alone;
- a call growing fast toward its agent's own memory.max, with the guest's memory ample, is
  left to the kernel and completes: the memory watch guards shared memory only.

One daemon serves the module: under emulation its start-up (Python, BPF verification)
costs about a minute, which the per-test alarm must not count.
"""

import asyncio
import json
import subprocess
import time

import pytest

from agentd.enforce.pressure import PressureWatch
from tests.helpers import REPO, agentd_cmd

from .kernel_support import State, running_daemon, wait_for

pytestmark = pytest.mark.kernel

# One policy for all three tests: the `squeezed` agent class (memory.high 96 MiB) makes
# the ladder test's pressure; admission waits only on evidence (--mem), which only the
# admission and OOM tests give.
POLICY = """\
version: 1
agent_classes:
  normal: {}
  squeezed:
    memory: {high: 96Mi}
  capped:
    memory: {max: 192Mi}
# The built-in tool classes, plus `held`: a call the policy holds at 48 MiB of memory.high.
tool_classes:
  interactive: {priority: 80, latency: interactive, cpu: {weight: 200}, straggler_grace_s: 0.5}
  normal: {priority: 50}
  batch: {priority: 20, latency: batch, cpu: {weight: 50}}
  held: {priority: 20, memory: {high: 48Mi}}
pressure:
  psi_some_threshold_us: 100000
  psi_window_us: 2000000
  steps: [throttle, freeze, kill]
  step_interval_s: 1.0
  relief_interval_s: 2.0
  budget: 200Mi
admission:
  enabled: true
  max_wait_s: 60
cpu:
  scheduler: weights
# The agents' own shell commands (cut, sleep) would become automatic tool calls; these
# tests are about `agentd tool`.
detection:
  enabled: false
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cgfs):
    with running_daemon(cgfs, tmp_path_factory.mktemp("enforce"), "enforce", POLICY) as d:
        yield d


def start_agent(d, tmp_path, name, script, hog, agent_class=None):
    out = tmp_path / "out"
    out.mkdir()
    cls = ["--class", agent_class] if agent_class else []
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", name, *cls, "--", "bash", "-c", script, "agent",
                                             str(out), hog, *agentd_cmd()],
                             env=d.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return agent, out


def end_tools(d, name):
    """Kill what is left of an agent's tool calls: killing `agentd run` leaves them running,
    and their memory and forecasts would weigh on the next test (admission, pressure)."""
    for a in d.request({"op": "status"}).get("agents", []):
        if a["agent"] == name:
            for t in a["tools"]:
                d.request({"op": "kill", "agent": name, "tool": t["tool"]})


def end_agent(agent):
    if agent.poll() is None:
        agent.kill()
    agent.wait(30)


def tool_ids(d, name, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = d.request({"op": "status"})
        for a in st.get("agents", []):
            if a["agent"] == name and len(a["tools"]) >= n:
                return {t["tool_class"]: t["tool"] for t in a["tools"]}
        time.sleep(0.1)
    raise AssertionError(f"tool calls of {name} did not start: {d.log()[-3000:]}")


def events(d):
    """The daemon's events; a line still being written is skipped, not a failure."""
    out = []
    try:
        with open(d.event_log) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def wait_event(d, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(d):
            if pred(e):
                return e
        time.sleep(0.1)
    raise AssertionError(f"no matching event in {events(d)[-5:]}")


def actions(d, agent):
    return [e for e in events(d) if e.get("event") == "action" and e.get("tool") and e.get("agent") == agent]


def started(d, agent, tool):
    return next(e["ts"] for e in events(d)
                if e.get("event") == "tool_start" and e.get("agent") == agent and e.get("tool") == tool)


def oom_kills():
    """The guest's OOM kills so far, every cgroup's and the global OOM killer's."""
    with open("/proc/vmstat") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("oom_kill "))


def test_every_psi_trigger_event_reaches_the_event_loop(cgtree, cgfs, hog, state, figure):
    """A hog held at memory.high stalls without pause, so the kernel signals the trigger once
    per window; each signal must reach the loop. (With the trigger epoll nested in the
    loop's, the loop woke for each one and was told of none: see agentd/kernel/psi.py.)"""
    cg = cgtree.child("stall", memory_high=str(16 << 20))
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        watch = PressureWatch(100_000, 2_000_000, lambda key, now, how: got.append((now, watch.handoff_s)))
        watch.watch("stall", cgfs.path(cg, "memory.pressure"))
        watch.start(loop)
        try:
            assert watch.mode == "psi-trigger"
            cgtree.spawn(cg, [hog, "alloc", "64", state().path])
            # The hog stalls without pause once it runs; how soon it runs depends on how busy
            # the host running this emulated guest is, so wait for three signals, not a fixed time.
            deadline = loop.time() + 60
            while len(got) < 3 and loop.time() < deadline:
                await asyncio.sleep(0.1)
            first = got[0][0] if got else None
        finally:
            watch.stop()
        return first

    first = asyncio.run(main())
    # A lasting stall is signalled once per 2 s window, and each signal must reach the loop.
    assert len(got) >= 3, got
    gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
    assert all(g >= 1.9 for g in gaps), gaps
    figure("PSI trigger events: seconds for 3 signals (2 s window)", f"{got[2][0] - first:.1f}")
    figure("trigger thread to loop hand-off (max)", f"{max(h for _, h in got) * 1000:.2f}", "ms")


LADDER_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
AGENTD_FEEDBACK_FILE="$OUT/batch.json" "$@" tool --class batch -- "$HOG" alloc 400 "$OUT/batch.state" \
    2>"$OUT/batch.err" &
AGENTD_FEEDBACK_FILE="$OUT/inter.json" "$@" tool --class interactive -- "$HOG" alloc 32 "$OUT/inter.state" \
    2>"$OUT/inter.err" &
wait
echo alive > "$OUT/main.txt"
"""


def test_ladder_throttles_freezes_kills_lowest_priority_first(daemon, tmp_path, hog, figure):
    d = daemon
    agent, out = start_agent(d, tmp_path, "ladder", LADDER_SCRIPT, hog, agent_class="squeezed")
    try:
        tools = tool_ids(d, "ladder", 2)
        batch, inter = tools["batch"], tools["interactive"]
        assert d.request({"op": "status"})["modes"]["pressure"] == "psi-trigger", d.log()[-2000:]
        wait_event(d, lambda e: e.get("action") == "kill" and e.get("agent") == "ladder" and e.get("tool") == batch,
                   timeout=60)
        acts = actions(d, "ladder")
        # Throttle, freeze, kill. When no new event comes while it is frozen (its stall
        # stopped), relief may undo the steps first; thawed into the same stall it relapses
        # and is killed next.
        steps = [e["action"] for e in acts if e["tool"] == batch]
        assert steps[:2] == ["throttle", "freeze"] and steps[-1] == "kill", acts
        assert set(steps[2:-1]) <= {"restore", "thaw"}, acts
        kill_at = next(i for i, e in enumerate(acts) if e["tool"] == batch and e["action"] == "kill")
        assert not any(e["tool"] == inter for e in acts[:kill_at]), acts
        thr = acts[0]
        assert thr["old"] == "max" or int(thr["new"]) < int(thr["old"]), thr
        # The agent and its interactive call live on (the interactive call, throttled by the
        # agent's memory.high too, completes once the batch call's memory is gone); end the
        # call so the agent can finish.
        wait_for(lambda: State(out / "inter.state").value() == 32, 30, "the interactive call to go on")
        assert d.request({"op": "kill", "agent": "ladder", "tool": inter})["ok"]
        agent.wait(60)
        assert agent.returncode == 0, agent.stderr.read()
        assert (out / "main.txt").read_text().strip() == "alive"
        err = (out / "batch.err").read_text()
        for phrase in ("is being slowed down", "is paused", "is being killed by agentd"):
            assert phrase in err, err
        res = json.loads((out / "batch.json").read_text().splitlines()[-1])
        assert res["outcome"] == "killed"
        done = [a["action"] for a in res["actions"]]
        assert done[:2] == ["throttle", "freeze"] and done[-1] == "kill", done
        # The first step answers the trigger itself; later steps follow step_interval_s on
        # the tick, so only the first measures the reaction.
        assert thr["after_trigger_s"] is not None and thr["after_trigger_s"] < 1.0, thr
        figure("PSI event to first ladder action", f"{thr['after_trigger_s'] * 1000:.1f}", "ms")
        figure("hog start to first ladder action", f"{thr['ts'] - started(d, 'ladder', batch):.2f}", "s")
        figure("throttle to kill", f"{acts[kill_at]['ts'] - thr['ts']:.2f}", "s")
    finally:
        end_tools(d, "ladder")
        end_agent(agent)


# The spike asks for more than the guest has (1 GiB, no swap), touching 1 MiB at a time as
# fast as the emulated CPU allows (30-260 MiB/s measured): left alone, the kernel's OOM
# killer would end it within seconds. It is the agent's only call (admission admits a lone
# call whatever its forecast; this test is about the ladder), started a few seconds after
# the agent: starting processes right after an earlier test's memory pressure refaults
# evicted page cache over 9p, a memory stall PSI reports and the ladder would answer first.
SPIKE_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
sleep 4
AGENTD_FEEDBACK_FILE="$OUT/spike.json" "$@" tool --class batch -- "$HOG" alloc 1536 "$OUT/spike.state" \
    2>"$OUT/spike.err"
echo $? > "$OUT/spike.rc"
echo alive > "$OUT/main.txt"
"""


def test_memory_watch_stops_a_fast_growing_low_priority_call_before_the_oom_killer(daemon, tmp_path, hog, figure):
    d = daemon
    ooms = oom_kills()
    agent, out = start_agent(d, tmp_path, "spike", SPIKE_SCRIPT, hog)
    try:
        spike = tool_ids(d, "spike", 1, timeout=90)["batch"]
        first = wait_event(d, lambda e: (e.get("event") == "action" and e.get("agent") == "spike"
                                         and e.get("tool") == spike), timeout=90)
        # The memory watch saw the growth and the ladder acted before PSI reported a stall
        # and before any OOM kill.
        assert "(memory watch)" in first["reason"], first
        # A throttle holds a call to what it has plus half the memory left; where the call's
        # forecast limit is already tighter the step changes nothing and the freeze is
        # the first write.
        assert first["action"] in ("throttle", "freeze"), first
        # The ladder goes on to the kill (the call can only grow or wait); nobody was OOM-killed.
        agent.wait(90)
        assert agent.returncode == 0, agent.stderr.read()
        assert (out / "main.txt").read_text().strip() == "alive"
        assert (out / "spike.rc").read_text().strip() == "137"
        res = json.loads((out / "spike.json").read_text().splitlines()[-1])
        assert res["outcome"] == "killed", res
        assert [a["action"] for a in res["actions"]][:1] == [first["action"]], res["actions"]
        assert State(out / "spike.state").value() < 1536
        assert oom_kills() == ooms, "the kernel's OOM killer acted"
        told = (out / "spike.err").read_text()
        assert ("is being slowed down" if first["action"] == "throttle" else "is paused") in told, told
        figure("spike start to first ladder action (memory watch)",
               f"{first['ts'] - started(d, 'spike', spike):.2f}", "s")
        figure("memory-watch event to first ladder action", f"{first['after_trigger_s'] * 1000:.1f}", "ms")
        figure("spike MiB touched when killed", State(out / "spike.state").value(), "MiB")
        figure("first action", first["action"] + ": " + first["reason"].split(": ", 1)[1])
    finally:
        end_tools(d, "spike")
        end_agent(agent)


ADMIT_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
"$@" tool --mem 150M -- "$HOG" alloc 100 "$OUT/holder.state" 2>"$OUT/holder.err" &
while [ "$(cut -d' ' -f1 "$OUT/holder.state" 2>/dev/null)" != 100 ]; do sleep 0.1; done
AGENTD_FEEDBACK_FILE="$OUT/late.json" "$@" tool --mem 150M -- true 2>"$OUT/late.err"
echo $? > "$OUT/late.rc"
wait
"""


def wait_calm(d, cgfs, below=1.0, timeout=90):
    """Wait until the tree's memory pressure (some avg10, %) has settled. After the spike
    test evicts the guest's page cache, refaults keep the tree stalled for a while, and the
    ladder would rightly act on whatever call runs next; the admission test is not about
    that."""
    def calm():
        some = cgfs.read(d.root, "memory.pressure").splitlines()[0].split()
        return float(dict(kv.split("=") for kv in some[1:])["avg10"]) < below
    wait_for(calm, timeout, f"memory pressure in {d.root} to settle below {below}%", step=0.5)


def test_admission_holds_a_call_until_the_running_one_frees_its_memory(daemon, cgfs, tmp_path, hog, figure):
    d = daemon
    wait_calm(d, cgfs)
    agent, out = start_agent(d, tmp_path, "admit", ADMIT_SCRIPT, hog)
    try:
        holder = tool_ids(d, "admit", 1)["normal"]
        wait_event(d, lambda e: e.get("action") == "queue" and e.get("agent") == "admit", timeout=60)
        time.sleep(2.0)
        assert not (out / "late.rc").exists(), "the late call ran while the holder held its memory"
        assert d.request({"op": "kill", "agent": "admit", "tool": holder})["ok"]
        wait_for(lambda: (out / "late.rc").exists(), 60, "the late call to run")
        agent.wait(60)
        err = (out / "late.err").read_text()
        assert "[agentd] true is waiting for memory" in err, err
        res = json.loads((out / "late.json").read_text().splitlines()[-1])
        q = next(a for a in res["actions"] if a["action"] == "queue")
        assert q["seconds"] >= 2.0 and not q.get("timed_out"), q
        assert (out / "late.rc").read_text().strip() == "0"
        figure("admission wait (holder killed after >= 2 s)", f"{q['seconds']:.2f}", "s")
    finally:
        end_agent(agent)


OOM_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
AGENTD_FEEDBACK_FILE="$OUT/oom.json" "$@" tool --mem 32M -- "$HOG" alloc 256 "$OUT/oom.state" 2>"$OUT/oom.err"
echo $? > "$OUT/oom.rc"
"$@" tool -- true && echo alive > "$OUT/main.txt"
"""


def test_agentd_tool_oom_killed_as_a_tool_call_agent_and_daemon_survive(daemon, tmp_path, hog, figure):
    d = daemon
    agent, out = start_agent(d, tmp_path, "oom", OOM_SCRIPT, hog)
    try:
        agent.wait(90)
        assert agent.returncode == 0, (agent.stderr.read(), d.log()[-3000:])
        assert (out / "oom.rc").read_text().strip() == "137"          # 128 + SIGKILL, as a shell shows it
        assert (out / "main.txt").read_text().strip() == "alive"      # the agent went on to its next call
        err = (out / "oom.err").read_text()
        assert "[agentd] hog was killed: it reached its 30.5 MiB limit" in err, err
        res = json.loads((out / "oom.json").read_text().splitlines()[-1])
        assert res["outcome"] == "oom_killed", res
        assert res["memory_events"]["oom_kill"] >= 1
        assert State(out / "oom.state").value() < 32, "the hog touched more than its memory.max"
        assert d.proc.poll() is None and d.request({"op": "hello"})["ok"]
        figure("OOM-killed tool call peak", f"{res['memory_peak_bytes'] / 2**20:.1f}", "MiB")
    finally:
        end_agent(agent)


# The held call wants 96 MiB under a memory.high of 48 MiB: with no swap it stalls in
# memory.high's reclaim from 48 MiB on, and inches past it (memory.high is not a hard cap).
HELD_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
"$@" tool --class held -- "$HOG" alloc 96 "$OUT/held.state" 2>"$OUT/held.err"
echo $? > "$OUT/held.rc"
"""


def test_a_call_held_at_its_memory_high_is_not_escalated_by_its_own_stall(daemon, cgfs, tmp_path, hog, figure):
    """Its stall fires the tree's and its agent's PSI triggers; agentd sees that the held call
    explains the stall and takes no ladder step (before, it throttled, froze and killed the
    call within seconds, for a stall its own limit made)."""
    d = daemon
    wait_calm(d, cgfs)
    seen = len(events(d))
    agent, out = start_agent(d, tmp_path, "held", HELD_SCRIPT, hog)
    try:
        tool = tool_ids(d, "held", 1)["held"]
        wait_for(lambda: State(out / "held.state").value() >= 44, 60, "the held call to reach its memory.high")
        ev = wait_event(d, lambda e: e.get("event") == "pressure_ignored" and f"held/{tool}" in e.get("held", ()),
                        timeout=30)
        time.sleep(6.0)              # three more PSI windows of the same stall
        acts = [e for e in actions(d, "held")]
        assert acts == [], acts
        assert not (out / "held.rc").exists(), (out / "held.err").read_text()
        n = sum(1 for e in events(d)[seen:] if e.get("event") == "pressure_ignored")
        figure("PSI events ignored as the held call's own stall (>= 6 s)", n)
        figure("stall the held call explained (first event)", f"{ev['held_us'] / max(ev['stall_us'], 1) * 100:.0f}", "%")
    finally:
        end_tools(d, "held")
        end_agent(agent)


CAPPED_SCRIPT = """\
OUT="$1"; HOG="$2"; shift 2
AGENTD_FEEDBACK_FILE="$OUT/grow.json" "$@" tool -- "$HOG" alloc 160 "$OUT/grow.state" 2>"$OUT/grow.err"
echo alive > "$OUT/main.txt"
"""


def reload_policy(d, text):
    with open(d.policy, "w") as f:
        f.write(text)
    r = d.request({"op": "reload"})
    assert r.get("ok"), r


def test_fast_growth_under_the_agents_own_cap_is_left_to_the_kernel(daemon, cgfs, tmp_path, hog, figure):
    """A call growing fast to 160 MiB under its agent's 192 MiB memory.max. The policy's
    horizon is 60 s for this test, so any pace the memory watch reports (32 MiB/s or more)
    carried over the horizon passes the guest's free memory, however fast the emulated
    guest runs: projected at its pace, every report would be urgent. The call cannot grow
    past its agent's cap, so it cannot use the guest's memory up: no ladder step, no OOM
    kill (the kernel would kill the call, not the agent, had it not fitted), and the log
    says what bounded it. (At the 2 s default this passed or failed with the emulation's
    speed: a call faster than half the guest's free memory per second was throttled.)"""
    d = daemon
    wait_calm(d, cgfs)
    reload_policy(d, POLICY.replace("  budget: 200Mi\n", "  budget: 200Mi\n  memory_watch_horizon_s: 60\n"))
    ooms = oom_kills()
    agent, out = start_agent(d, tmp_path, "capped", CAPPED_SCRIPT, hog, agent_class="capped")
    try:
        grow = tool_ids(d, "capped", 1, timeout=90)["normal"]
        t0 = time.monotonic()
        wait_for(lambda: (out / "grow.state").exists() and State(out / "grow.state").value() >= 160, 60,
                 "the call to touch 160 MiB", step=0.05)
        took = time.monotonic() - t0
        time.sleep(2.0)           # the watch's events and any step they would bring
        assert not actions(d, "capped"), actions(d, "capped")
        assert oom_kills() == ooms, "the kernel's OOM killer acted"
        assert State(out / "grow.state").value() == 160
        told = [line for line in d.log().splitlines()
                if f"tool capped/{grow}: grows" in line and "left to the kernel (memory watch)" in line]
        # The watch reports a call growing 32 MiB/s or more: the guest must stage that.
        assert told, (f"the memory watch never reported the call: 160 MiB in {took:.2f} s, "
                      f"{160 / took:.0f} MiB/s on average (the watch reports from 32 MiB/s)")
        assert "its agent's memory.max" in told[0], told
        figure("capped call: seconds to touch 160 MiB (no ladder step)", f"{took:.2f}", "s")
        figure("capped call: what the watch logged", told[0].split(": ", 1)[-1])
    finally:
        end_tools(d, "capped")
        end_agent(agent)
        reload_policy(d, POLICY)
