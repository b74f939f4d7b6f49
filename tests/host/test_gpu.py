"""GPU placement and budgets in a real daemon on the host's cgroup v2 tree, with the NVML
scripted through $AGENTD_FAKE_NVML: the GPU processes the script lists are real processes
the agent started in its tool calls, so attribution goes through their real
/proc/<pid>/cgroup and the kill through the tool call's real cgroup.kill."""

import json
import os
import time

from tests.helpers import DaemonProc

GiB = 1 << 30

POLICY = """\
version: 1
defaults: {agent_class: normal, tool_class: normal}
agent_classes:
  normal: {priority: 400, gpu: {memory_budget: max, priority: 400}}
  small: {priority: 100, gpu: {memory_budget: 5Gi, priority: 100, over_budget: kill}}
  watched: {priority: 100, gpu: {memory_budget: 3Gi, priority: 100, over_budget: notify}}
tool_classes:
  normal: {priority: 50}
  train: {priority: 30, device: gpu, gpu: {fallback: offload, offload_cpu_weight: 300}}
  suite: {priority: 20, device: gpu, gpu: {fallback: wait}}
  probe: {priority: 40, device: auto}
tool_rules:
  - {name: gen, match: {argv_regex: '\\bgen\\.py\\b'}, class: probe, gpu: {prior: 12Gi}}
admission: {max_wait_s: 30, on_timeout: run}
"""

# Each tool call records its pid and CUDA_VISIBLE_DEVICES, then waits for the test.
TOOL = 'echo $$ > "$OUT/{name}.pid"; printf "[%s]" "${{CUDA_VISIBLE_DEVICES-unset}}" > "$OUT/{name}.cvd"; ' \
       'while [ ! -e "$OUT/{name}.go" ]; do sleep 0.05; done'


def write_nvml(path, devices):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"driver": "550.0-test", "mps": False, "devices": devices}, f)
    os.replace(tmp, path)


def device(total=16 * GiB, other=0, procs=()):
    return {"name": "Fake GPU", "uuid": "GPU-test-0", "memory_total": total, "memory_other": other,
            "utilization": 10, "processes": [{"pid": p, "used": u} for p, u in procs]}


def wait_file(path, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return f.read()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


class GpuDaemon:
    def __init__(self, tmp_path, test_root, devices, metrics="none"):
        self.nvml = str(tmp_path / "nvml.json")
        write_nvml(self.nvml, devices)
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.d = DaemonProc(str(tmp_path), test_root, policy=str(policy), metrics=metrics,
                            extra_env={"AGENTD_FAKE_NVML": self.nvml, "AGENTD_GPU_INTERVAL_S": "0.1"})
        self.d.start()

    def agent(self, script, name, agent_class="normal"):
        """Start `agentd run` in the background; returns the Popen."""
        import subprocess
        from tests.helpers import REPO, agentd_cmd
        return subprocess.Popen(agentd_cmd() + ["run", "--name", name, "--class", agent_class, "--", "bash", "-c",
                                                script, "agent"] + agentd_cmd(),
                                env=dict(self.d.env, OUT=str(self.out)), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def go(self, name):
        (self.out / f"{name}.go").write_text("")


def tool(name, cls):
    return f'AGENTD_FEEDBACK_FILE="$OUT/{name}.json" "$@" tool --class {cls} -- bash -c \'{TOOL.format(name=name)}\' ' \
           f'2>"$OUT/{name}.err"'


def test_placement_offload_and_queue(tmp_path, test_root):
    g = GpuDaemon(tmp_path, test_root, [device(other=2 * GiB)])
    try:
        # `a` fits (the 2 GiB prior); then its real pid is listed holding 13 GiB: the GPU is full.
        p = g.agent(tool("a", "train") + ' & until [ -e "$OUT/next" ]; do sleep 0.05; done; ' + tool("b", "train") +
                    " & sleep 0.5; " + tool("c", "suite") + " & wait", "gpuag")
        assert wait_file(g.out / "a.cvd") == "[GPU-test-0]"
        pid_a = int(wait_file(g.out / "a.pid"))
        write_nvml(g.nvml, [device(other=2 * GiB, procs=[(pid_a, 13 * GiB)])])
        time.sleep(0.3)                                           # a tick reads it
        (g.out / "next").write_text("")
        assert wait_file(g.out / "b.cvd", 20) == "[]"            # offloaded: no GPU visible
        err_b = wait_file(g.out / "b.err")
        assert "runs on the CPU, not a GPU" in err_b and "no GPU has that much free" in err_b
        # The suite class waits instead, and says so.
        assert "is waiting for a GPU" in wait_file(g.out / "c.err")
        time.sleep(0.5)
        assert not (g.out / "c.cvd").exists()
        g.go("a")
        write_nvml(g.nvml, [device(other=2 * GiB)])              # a's memory freed with its exit
        assert wait_file(g.out / "c.cvd", 20) == "[GPU-test-0]"
        g.go("b")
        g.go("c")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, (err, g.d.log())
        c = json.loads(wait_file(g.out / "c.json"))
        q = next(a for a in c["actions"] if a["action"] == "gpu_queue")
        assert q["seconds"] > 0.4 and not q["timed_out"]
        ev = [e for e in g.d.events() if e.get("event") == "gpu_placement"]
        assert sorted(e["outcome"] for e in ev) == ["gpu", "gpu", "offload"], ev
        # The CPU weight boost from the policy was requested for the offloaded call.
        b_start = next(e for e in g.d.events() if e.get("event") == "gpu_placement" and e["outcome"] == "offload")
        assert b_start["env"] == {"CUDA_VISIBLE_DEVICES": ""}
    finally:
        for n in "abc":
            g.go(n)
        g.d.cleanup()


def test_over_budget_kill_through_real_cgroup(tmp_path, test_root):
    """An agent over its GPU budget loses its lowest-priority GPU call: attribution reads the
    real processes' cgroups, the kill writes the real cgroup.kill."""
    g = GpuDaemon(tmp_path, test_root, [device()])
    try:
        p = g.agent(tool("hi", "train") + " & sleep 0.3; " + tool("lo", "suite") + " & wait", "budget", "small")
        pid_hi = int(wait_file(g.out / "hi.pid"))
        pid_lo = int(wait_file(g.out / "lo.pid"))
        # Both were placed on the GPU (2 x the 2 GiB prior fit the 5 GiB budget).
        assert wait_file(g.out / "hi.cvd") == wait_file(g.out / "lo.cvd") == "[GPU-test-0]"
        # Within the budget: nothing happens.
        write_nvml(g.nvml, [device(procs=[(pid_hi, 2 * GiB), (pid_lo, 2 * GiB)])])
        time.sleep(0.6)
        assert os.path.exists(f"/proc/{pid_lo}") and os.path.exists(f"/proc/{pid_hi}")
        # A process that is not the agent's holds a lot: not the agent's budget either.
        write_nvml(g.nvml, [device(procs=[(pid_hi, 2 * GiB), (pid_lo, 2 * GiB), (os.getpid(), 8 * GiB)])])
        time.sleep(0.6)
        assert os.path.exists(f"/proc/{pid_lo}")
        # Over budget: the suite call (priority 20 < train's 30) is killed.
        write_nvml(g.nvml, [device(procs=[(pid_hi, 2 * GiB), (pid_lo, 4 * GiB)])])
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid_lo}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid_lo}")
        assert os.path.exists(f"/proc/{pid_hi}")
        write_nvml(g.nvml, [device(procs=[(pid_hi, 2 * GiB)])])
        g.go("hi")
        p.communicate(timeout=30)
        lo = json.loads(wait_file(g.out / "lo.json"))
        assert lo["outcome"] == "killed"
        assert "GPU memory budget" in wait_file(g.out / "lo.err")
        kills = [e for e in g.d.events() if e.get("event") == "action" and e.get("action") == "kill"]
        assert len(kills) == 1 and kills[0]["tool"].endswith("-suite"), kills
    finally:
        g.go("hi")
        g.go("lo")
        g.d.cleanup()


def test_over_budget_notify_reaches_the_tool(tmp_path, test_root):
    g = GpuDaemon(tmp_path, test_root, [device()])
    try:
        p = g.agent(tool("n", "train") + " & wait", "notify", "watched")
        pid = int(wait_file(g.out / "n.pid"))
        assert wait_file(g.out / "n.cvd") == "[GPU-test-0]"
        write_nvml(g.nvml, [device(procs=[(pid, 4 * GiB)])])
        deadline = time.monotonic() + 10
        while "GPU memory budget" not in (g.out / "n.err").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "over its" in (g.out / "n.err").read_text()
        assert os.path.exists(f"/proc/{pid}")                  # notify: the call goes on
        g.go("n")
        p.communicate(timeout=30)
        n = json.loads(wait_file(g.out / "n.json"))
        assert n["outcome"] == "ok" and [a["action"] for a in n["actions"]] == ["gpu_over_budget"]
    finally:
        g.go("n")
        g.d.cleanup()


def test_daemon_without_gpu_runs_calls_untouched(tmp_path, test_root):
    """No NVML (here: the fake says the library is missing): GPU placement is off with one
    info line and tool calls get no CUDA variables."""
    g = GpuDaemon(tmp_path, test_root, [device()])
    g.d.cleanup()
    with open(g.nvml, "w") as f:
        json.dump({"init_error": "LibraryNotFound"}, f)
    d = DaemonProc(str(tmp_path / "nogpu"), test_root, policy=str(tmp_path / "policy.yaml"),
                   extra_env={"AGENTD_FAKE_NVML": g.nvml})
    os.makedirs(d.tmp, exist_ok=True)
    d.start()
    try:
        r = d.run('"$@" tool --class train -- bash -c \'printf "%s" "${CUDA_VISIBLE_DEVICES-unset}"\'',
                  *__import__("tests.helpers", fromlist=["agentd_cmd"]).agentd_cmd(), name="nogpu")
        assert r.returncode == 0, (r.stderr, d.log())
        assert r.stdout == "unset"
        assert "GPU placement off" in d.log() and "libnvidia-ml.so.1" in d.log()
    finally:
        d.cleanup()


def test_auto_call_learns_it_uses_a_gpu_and_metrics_show_the_agent(tmp_path, test_root):
    """A `device: auto` call with no GPU history runs unplaced; NVML shows its real process
    holding memory, which the metrics endpoint reports for its agent; the call's GPU peak goes
    to the GPU history, so the same command is placed on the GPU next time."""
    import re
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = GpuDaemon(tmp_path, test_root, [device()], metrics=f"127.0.0.1:{port}")
    try:
        first = TOOL.format(name="first")
        again = TOOL.format(name="again")
        p = g.agent(f'"$@" tool --class probe -- bash -c \'{first}\' 2>"$OUT/first.err"; '
                    f'"$@" tool --class probe -- bash -c \'{again}\' 2>"$OUT/again.err"', "learner")
        assert wait_file(g.out / "first.cvd") == "[unset]"        # no history: left alone
        pid = int(wait_file(g.out / "first.pid"))
        write_nvml(g.nvml, [device(procs=[(pid, 3 * GiB)])])
        deadline = time.monotonic() + 15
        held = 0.0
        while time.monotonic() < deadline and held < 3 * GiB:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            held = sum(float(v) for v in re.findall(
                r'agentd_agent_gpu_memory_bytes\{agent="learner",gpu="0"\} (\S+)', text))
            time.sleep(0.1)
        assert held == 3 * GiB
        time.sleep(0.3)                                           # a tick records the peak
        write_nvml(g.nvml, [device()])
        g.go("first")
        # Same signature (bash -c 'echo $$ > ...'), now with GPU history: placed.
        assert wait_file(g.out / "again.cvd") == "[GPU-test-0]"
        assert "runs on GPU 0" in wait_file(g.out / "again.err")
        g.go("again")
        p.communicate(timeout=30)
        assert p.returncode == 0
    finally:
        g.go("first")
        g.go("again")
        g.d.cleanup()


# An automatically detected tool call: opens the device node argv[1] read-write and writes
# the outcome ("ok" or the errno) and its own cgroup to argv[2].
GEN = r"""
import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDWR))
    r = "ok"
except OSError as e:
    r = str(e.errno)
with open(sys.argv[2], "w") as f:
    f.write(r + " " + open("/proc/self/cgroup").read().strip())
"""


def test_auto_detected_call_sent_to_the_cpu_cannot_open_the_gpu(tmp_path, test_root):
    """A `device: auto` call with a policy prior (a rule's 12 GiB) that no GPU has room for is
    offloaded; detected automatically, it exec'd with the agent's environment, so the device
    program on its cgroup is what keeps it off the GPU: its open of a c 195 0 node made by
    mknod fails with EPERM, while the same open outside its cgroup reaches the (absent) driver."""
    import errno
    import stat
    import sys
    g = GpuDaemon(tmp_path, test_root, [device(other=10 * GiB)])
    try:
        node = str(tmp_path / "nvidia0")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(195, 0))
        (g.out / "gen.py").write_text(GEN)
        p = g.agent(f'{sys.executable} -S "$OUT/gen.py" {node} "$OUT/gen.result"; echo done > "$OUT/done"', "auto")
        result = wait_file(g.out / "gen.result", 30)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, (err, g.d.log())
        code, cgroup = result.split(" ", 1)
        assert f"/{test_root}/agents/auto/tools/" in cgroup, result     # detected: its own tool call
        assert int(code) == errno.EPERM, result
        try:
            os.close(os.open(node, os.O_RDWR))
            outside = "ok"
        except OSError as e:
            outside = e.errno
        assert outside == errno.ENXIO
        ev = [e for e in g.d.events() if e.get("event") == "gpu_placement"]
        assert [(e["outcome"], e["forecast_bytes"], e["devices_hidden"]) for e in ev] == \
            [("offload", 12 * GiB, True)], ev
        start = next(e for e in g.d.events() if e.get("event") == "tool_start" and e["tool"] == ev[0]["tool"])
        assert start["origin"] == "auto" and start["rule"] == "gen"
    finally:
        g.d.cleanup()
