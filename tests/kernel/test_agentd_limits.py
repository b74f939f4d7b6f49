"""What test_memory.py, test_cpu_pids.py and test_freeze.py show of the kernel, shown again
through agentd: a real `agentd daemon` with a policy that sets the limits, agents started
with `agentd run`, tool calls made with `agentd tool`, and the kernel's own files and
counters as the witness. Each test fails if the daemon stops doing its part:
- the tool call's memory.max is the class's, its memory.high the forecast's, and
  memory.oom.group is set; a call past its memory.max is OOM-killed whole (its background
  process too) while its agent goes on, and tool_end and the feedback line say so;
- cpu.weight of agents and calls follows their classes, and two spinning calls on one CPU
  share it in that ratio (and so do two agents);
- the class's pids.max stops a fork bomb in a tool call while the sibling agent forks;
- the API's freeze and thaw, and the pressure ladder's freeze and its relief, really stop
  and resume the call (cgroup.events frozen), and the metrics and status say so.

One daemon and two long-lived agents serve the module: under emulation a daemon costs
30-60 s to start and each `agentd run` a Python start. Each agent's main process is a
shell that runs the scripts the tests hand it (as an agent's persistent shell does), so a
test costs its tool calls only.
"""

import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request

import pytest

from agentd.enforce.limits import start_high
from tests.helpers import REPO, agentd_cmd

from .kernel_support import State, cpu_time_windows, running_daemon, stop, wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20

# Class names say what each test needs. The forecast predictor is `max` so that one
# finished call makes a forecast below the class cap (the shipped quantile predictor
# leans on the class prior until a signature has history), and the ladder's only step
# is freeze, so its relief is the thaw. Detection is off (the agents' shells would make
# automatic tool calls) and so is the memory watch (the ladder test is about PSI).
POLICY = """\
version: 1
agent_classes:
  normal: {}
  heavy: {priority: 80, memory: {max: 512Mi}, cpu: {weight: 400}, pids: {max: 512}}
  # The lowest priority, and little memory: the ladder's first candidate under pressure.
  light: {priority: 10, memory: {high: 96Mi}, cpu: {weight: 100}}
tool_classes:
  normal: {priority: 50}
  fenced: {priority: 50, memory: {max: 128Mi}}
  oomy: {priority: 50, memory: {max: 32Mi}, straggler_grace_s: 3}
  spin_hi: {priority: 50, cpu: {weight: 400}}
  spin_lo: {priority: 50, cpu: {weight: 100}}
  bomb: {priority: 50, pids: {max: 16}}
  # No forecast memory.high: the call stalls against its agent's memory.high, a stall
  # agentd did not make and so answers with the ladder.
  batch: {priority: 20, latency: batch, forecast: false}
forecast: {predictor: max, headroom: 1.5, min_high: 16Mi}
pressure:
  psi_some_threshold_us: 100000
  psi_window_us: 2000000
  steps: [freeze]
  step_interval_s: 1.0
  relief_interval_s: 2.0
  memory_watch: false
admission: {enabled: false}
cpu: {scheduler: weights}
detection: {enabled: false}
"""

HEADROOM, MIN_HIGH = 1.5, 16 * MiB

# The agent's main process: open the FIFO read-write (so it never sees EOF), say it is
# ready, then run each script path written to the FIFO in the background.
SHELL = ('exec 3<>"$0"; : > "$0.ready"; '
         'while IFS= read -r f <&3; do bash "$f" & done')


class AgentShell:
    """An agent started with `agentd run` whose main process runs the scripts it is handed.
    Scripts see $AGENTD (the front), $HOG and $OUT (a folder of their own for results)."""

    def __init__(self, d, out, name, agent_class, hog):
        self.d, self.name, self.out = d, name, out
        self.fifo = str(out / f"{name}.fifo")
        os.mkfifo(self.fifo)
        self.seq = 0
        env = dict(d.env, AGENTD=agentd_cmd()[0], HOG=hog, OUT=str(out))
        self.proc = subprocess.Popen(
            agentd_cmd() + ["run", "--name", name, "--class", agent_class, "--", "bash", "-c", SHELL, self.fifo],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout=240):
        wait_for(lambda: os.path.exists(self.fifo + ".ready") or self.proc.poll() is not None, timeout,
                 f"agent {self.name} to start", step=0.2)
        assert self.proc.poll() is None, f"agent {self.name} exited: {self.proc.communicate()}"

    def sh(self, script):
        """Run `script` (bash) in the agent's main cgroup, in the background."""
        self.seq += 1
        path = self.out / f"{self.name}-{self.seq}.sh"
        path.write_text(script)
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"{path}\n".encode())
        finally:
            os.close(fd)

    def status(self):
        return next((a for a in self.d.request({"op": "status"})["agents"] if a["agent"] == self.name), None)

    def tool(self, tool_class, program=None, timeout=120):
        """The running tool call of `tool_class` (running `program`, when given; waits for
        it), with its cgroup path."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a = self.status()
            for t in (a or {}).get("tools", ()):
                if t["tool_class"] == tool_class and (program is None or program in t["argv"]):
                    return dict(t, cgroup=f"{a['cgroup']}/tools/{t['tool']}")
            time.sleep(0.1)
        raise AssertionError(f"no {tool_class} call of {self.name} started: {self.d.log()[-3000:]}")

    def end_tools(self):
        for t in (self.status() or {}).get("tools", ()):
            self.d.request({"op": "kill", "agent": self.name, "tool": t["tool"]})
        wait_for(lambda: not (self.status() or {}).get("tools"), 30, f"{self.name}'s tool calls to end", step=0.1)

    def stop(self):
        """SIGTERM reaches the shell through `agentd run`, which then reports the end: the
        daemon kills and removes what is left of the agent."""
        stop(self.proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, cgfs, hog):
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    with running_daemon(cgfs, tmp, "limits", POLICY, metrics=f"127.0.0.1:{port}") as d:
        d.port = port
        agents = {}
        try:
            out = tmp / "out"
            out.mkdir()
            for name in ("heavy", "light"):       # their Python starts overlap
                agents[name] = AgentShell(d, out, name, name, hog)
            for a in agents.values():
                a.wait_ready()
            yield d, agents
        finally:
            for a in agents.values():
                a.stop()


def actions_metric(d):
    """agentd_enforcement_actions_total from the daemon's /metrics: {(action, reason): n}."""
    from prometheus_client.parser import text_string_to_metric_families
    body = urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=30).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == "agentd_enforcement_actions_total":
                out[(s.labels["action"], s.labels["reason"])] = s.value
    return out


def count(metric, action, reason=None):
    return sum(v for (a, r), v in metric.items() if a == action and (reason is None or r == reason))


def usage_usec(cgfs, cg):
    return cgfs.read_flat_keyed(cg, "cpu.stat")["usage_usec"]


def test_daemon_writes_memory_max_and_the_forecast_memory_high(env, cgfs, figure):
    d, agents = env
    heavy = agents["heavy"]
    # One finished call of the class is the history the second call's forecast comes from.
    heavy.sh('"$AGENTD" tool --class fenced -- true && "$AGENTD" tool --class fenced -- "$HOG" count "$OUT/fenced"')
    try:
        t = heavy.tool("fenced", program="count")
        cg = t["cgroup"]
        forecast = t["forecast_bytes"]
        assert forecast, t
        high = cgfs.read(cg, "memory.high").strip()
        # memory.max is the class's; memory.high the forecast x headroom under it.
        assert cgfs.read(cg, "memory.max").strip() == str(128 * MiB)
        assert high == str(start_high(forecast, HEADROOM, MIN_HIGH, cap=128 * MiB)), (high, forecast)
        assert int(high) < 128 * MiB, "memory.high is the class cap: the forecast played no part"
        assert cgfs.read(cg, "memory.oom.group").strip() == "1"
        # What the daemon reports is what the kernel holds.
        start = d.wait_event(lambda e: e.get("event") == "tool_start" and e.get("tool") == t["tool"]
                           and e.get("agent") == "heavy", timeout=30)
        assert start["limits"]["memory.max"] == str(128 * MiB) and start["limits"]["memory.high"] == high, start
        assert t["limits"] == start["limits"], t
        # The agent's own limits are its class's.
        agent_cg = heavy.status()["cgroup"]
        assert cgfs.read(agent_cg, "memory.max").strip() == str(512 * MiB)
        assert cgfs.read(agent_cg, "pids.max").strip() == "512"
        assert cgfs.read(agents["light"].status()["cgroup"], "memory.high").strip() == str(96 * MiB)
        figure("fenced call: forecast / memory.high / memory.max",
               f"{forecast / MiB:.0f} / {int(high) / MiB:.0f} / 128", "MiB")
    finally:
        heavy.end_tools()


OOM_SCRIPT = """\
AGENTD_FEEDBACK_FILE="$OUT/oom.json" "$AGENTD" tool --class oomy -- \
    bash -c 'sleep 600 & exec "$HOG" alloc 256 "$OUT/oom.state"' 2>"$OUT/oom.err"
echo $? > "$OUT/oom.rc"
"$AGENTD" tool -- true && echo alive > "$OUT/after-oom"
"""


def test_a_call_past_its_memory_max_is_oom_killed_whole_and_its_agent_goes_on(env, figure):
    """The call is a hog and a `sleep` it left in the background. With memory.oom.group
    the kernel's OOM kill takes both (memory.events counts each process it killed, and
    nothing is left for agentd to stop); without it only the hog would die."""
    d, agents = env
    heavy = agents["heavy"]
    out = heavy.out
    t0 = time.monotonic()
    heavy.sh(OOM_SCRIPT)
    wait_for(lambda: (out / "after-oom").exists(), 120, "the agent's next call after the OOM kill", step=0.1)
    assert (out / "oom.rc").read_text().strip() == "137"          # SIGKILL, as the shell shows it
    end = d.wait_event(lambda e: e.get("event") == "tool_end" and e.get("agent") == "heavy"
                     and e.get("tool_class") == "oomy", timeout=30)
    assert end["outcome"] == "oom_killed", end
    assert end["limits"]["memory.max"] == str(32 * MiB), end
    assert end["memory_events"]["oom_kill"] >= 2, end              # the hog and its sleep
    assert end["stragglers"] == 0, end                             # the kernel took the whole call
    assert State(out / "oom.state").value() < 32
    told = (out / "oom.err").read_text()
    assert "was killed: it reached its 32.0 MiB limit" in told, told
    assert "background process" not in told, told
    fb = json.loads((out / "oom.json").read_text().splitlines()[-1])
    assert fb["outcome"] == "oom_killed" and fb["stragglers"] == 0, fb
    # The agent is still there, its shell still serving.
    assert heavy.proc.poll() is None and heavy.status() is not None
    figure("OOM kills counted in the call's memory.events (hog + sleep, group kill)",
           end["memory_events"]["oom_kill"])
    figure("call start to the agent's next call done", f"{time.monotonic() - t0:.1f}", "s")


def test_cpu_weights_of_agents_and_calls_share_one_cpu(env, cgfs, figure):
    """heavy (agent weight 400) runs a spin_hi (400) and a spin_lo (100) call, light
    (agent weight 100) a spin_hi call, all on one CPU: heavy's calls share 4:1 between
    them, and the two agents 4:1 between them."""
    d, agents = env
    heavy, light = agents["heavy"], agents["light"]
    cpu = max(os.sched_getaffinity(0))
    spin = 'taskset -c {cpu} "$AGENTD" tool --class {cls} -- "$HOG" spin'
    heavy.sh(spin.format(cpu=cpu, cls="spin_hi"))
    heavy.sh(spin.format(cpu=cpu, cls="spin_lo"))
    light.sh(spin.format(cpu=cpu, cls="spin_hi"))
    try:
        hi, lo, other = heavy.tool("spin_hi"), heavy.tool("spin_lo"), light.tool("spin_hi")
        cgs = [c["cgroup"] for c in (hi, lo, other)]
        assert [cgfs.read(c, "cpu.weight").strip() for c in cgs] == ["400", "100", "400"]
        assert cgfs.read(heavy.status()["cgroup"], "cpu.weight").strip() == "400"
        assert cgfs.read(light.status()["cgroup"], "cpu.weight").strip() == "100"
        wait_for(lambda: all(usage_usec(cgfs, c) > 0 for c in cgs), 30, "the three spinners to run")
        time.sleep(0.5)
        # The agents' own cgroups too: were a failure's CPU time spent outside the calls,
        # they show it.
        agent_cgs = [heavy.status()["cgroup"], light.status()["cgroup"]]
        # The ladder may pause a call (light's is its first candidate) under memory pressure
        # the guest has from elsewhere: a window in which one of them was frozen or acted on
        # does not measure the weights, and is set aside.
        tools = {("heavy", hi["tool"]), ("heavy", lo["tool"]), ("light", other["tool"])}

        def ladder_acted(start, end):
            return (any(cgfs.frozen(c) for c in cgs)
                    or any(e.get("event") == "action" and (e.get("agent"), e.get("tool")) in tools
                           and start - 0.5 <= e["ts"] <= end for e in d.events()))
        windows, aside = cpu_time_windows(cgfs, cgs + agent_cgs, tainted=ladder_acted)
        assert len(windows) >= 2, f"the ladder acted on the spinning calls in {aside} windows: {d.events()[-10:]}"
        for (dh, dl, do, _, _), wall_us in windows:
            assert dl > 0 and do > 0, windows
            # One CPU's worth in all: they really shared it.
            assert dh + dl + do < wall_us * 1.15, windows
        calls = statistics.median(dh / dl for (dh, dl, do, _, _), _ in windows)
        agents_ratio = statistics.median((dh + dl) / do for (dh, dl, do, _, _), _ in windows)
        seen = (windows, [e for e in d.events() if e.get("event") == "action"][-5:])
        assert 2.5 <= calls <= 6.5, f"CPU-time ratio {calls:.2f} of calls weighted 400:100: {seen}"
        assert 2.5 <= agents_ratio <= 6.5, f"CPU-time ratio {agents_ratio:.2f} of agents weighted 400:100: {seen}"
        figure("CPU-time ratio, calls 400:100 in one agent (median of 3 windows)", f"{calls:.2f}")
        figure("CPU-time ratio, agents 400:100 (median of 3 windows)", f"{agents_ratio:.2f}")
        figure("windows set aside (a ladder action on a measured call)", aside)
    finally:
        heavy.end_tools()
        light.end_tools()


def test_pids_max_of_the_class_stops_a_fork_bomb_while_the_sibling_agent_forks(env, cgfs, figure):
    d, agents = env
    heavy, light = agents["heavy"], agents["light"]
    limit, attempts = 16, 200
    bomb = State(heavy.out / "bomb.state")
    heavy.sh(f'"$AGENTD" tool --class bomb -- "$HOG" forkbomb {attempts} "$OUT/bomb.state"')
    try:
        t = heavy.tool("bomb")
        wait_for(lambda: "forked" in bomb.fields(), 90, "the fork bomb to report")
        _, forked, _, failed = bomb.fields()
        forked, failed = int(forked), int(failed)
        assert cgfs.read(t["cgroup"], "pids.max").strip() == str(limit)
        assert t["limits"]["pids.max"] == str(limit), t
        assert forked == limit - 1, f"forked {forked} with pids.max {limit} (the bomb itself is one)"
        assert failed == attempts - forked
        assert cgfs.read_int(t["cgroup"], "pids.current") == limit
        assert cgfs.read_flat_keyed(t["cgroup"], "pids.events")["max"] >= 1
        # The sibling agent forks freely while the bomb holds its limit.
        sib = State(light.out / "sibling.state")
        light.sh('"$AGENTD" tool -- "$HOG" forkbomb 32 "$OUT/sibling.state"')
        wait_for(lambda: "forked" in sib.fields(), 90, "the sibling agent's forks to report")
        assert sib.fields() == ["forked", "32", "failed", "0"]
        assert int(bomb.fields()[1]) == forked
        figure("fork bomb through agentd (class pids.max 16): forked / refused", f"{forked} / {failed}")
    finally:
        heavy.end_tools()
        light.end_tools()


def test_api_freeze_and_thaw_stop_and_resume_the_call(env, cgfs, figure):
    d, agents = env
    heavy = agents["heavy"]
    counter = State(heavy.out / "count.state")
    heavy.sh('"$AGENTD" tool -- "$HOG" count "$OUT/count.state"')
    try:
        t = heavy.tool("normal")
        cg = t["cgroup"]
        wait_for(lambda: counter.value() > 0, 60, "the counter to start")
        before = actions_metric(d)
        t0 = time.monotonic()
        assert d.request({"op": "freeze", "agent": "heavy", "tool": t["tool"]})["ok"]
        wait_for(lambda: cgfs.frozen(cg), 10, "cgroup.events frozen 1")
        figure("API freeze to frozen", f"{(time.monotonic() - t0) * 1000:.0f}", "ms")
        at = counter.value()
        time.sleep(0.5)
        assert counter.value() == at, "the counter advanced while frozen"
        assert heavy.tool("normal")["frozen"] is True
        assert d.request({"op": "thaw", "agent": "heavy", "tool": t["tool"]})["ok"]
        wait_for(lambda: not cgfs.frozen(cg), 10, "cgroup.events frozen 0")
        wait_for(lambda: counter.value() > at, 10, "the counter to advance after thaw")
        assert heavy.tool("normal")["frozen"] is False
        after = actions_metric(d)
        assert count(after, "freeze", "api") == count(before, "freeze", "api") + 1, (before, after)
        assert count(after, "thaw", "api") == count(before, "thaw", "api") + 1, (before, after)
    finally:
        heavy.end_tools()


# The call is a hog allocating past its agent's memory.high (light: 96 MiB), and a
# counter beside it that shows whether the call runs.
LADDER_SCRIPT = """\
"$AGENTD" tool --class batch -- bash -c '"$HOG" count "$OUT/ladder.count" & exec "$HOG" alloc 400 "$OUT/ladder.alloc"'
"""


def test_the_ladder_freezes_the_call_under_pressure_and_thaws_it_after(env, cgfs, figure):
    d, agents = env
    light = agents["light"]
    counter = State(light.out / "ladder.count")
    before = actions_metric(d)
    light.sh(LADDER_SCRIPT)
    try:
        t = light.tool("batch")
        cg = t["cgroup"]
        assert cgfs.read(cg, "memory.high").strip() == "max", "the call's own limit would explain its stall"
        # The kernel's own file is watched, not the event log: relief may thaw the call
        # 3 s after the stall ends, and a busy guest reads the log slowly.
        wait_for(lambda: cgfs.frozen(cg), 90, "cgroup.events frozen 1 (the ladder's freeze)", step=0.01)
        at = counter.value()
        time.sleep(0.5)
        assert cgfs.frozen(cg) and counter.value() == at, "the counter advanced while frozen"

        def ladder(e, act):
            return (e.get("event") == "action" and e.get("agent") == "light" and e.get("tool") == t["tool"]
                    and e.get("action") == act)

        frz = d.wait_event(lambda e: ladder(e, "freeze"), timeout=10)
        assert frz["reason"] != "api", frz
        # Relief thaws it once the stall is gone, and it runs again.
        wait_for(lambda: not cgfs.frozen(cg), 30, "the ladder's thaw (cgroup.events frozen 0)", step=0.01)
        wait_for(lambda: counter.value() > at, 10, "the counter to advance after the thaw")
        thaw = d.wait_event(lambda e: ladder(e, "thaw"), timeout=10)
        after = actions_metric(d)
        assert count(after, "freeze") - count(after, "freeze", "api") > \
            count(before, "freeze") - count(before, "freeze", "api"), (before, after)
        assert count(after, "thaw") - count(after, "thaw", "api") > \
            count(before, "thaw") - count(before, "thaw", "api"), (before, after)
        figure("ladder: frozen for", f"{thaw['ts'] - frz['ts']:.2f}", "s")
        figure("ladder freeze reason", frz["reason"])
    finally:
        light.end_tools()
