"""GPU placement and attribution against a real NVIDIA GPU and driver (marker `gpu`,
deselected by default: `python3 -m pytest -m gpu tests/host/test_gpu_real.py`).

Needs: root, cgroup v2, an NVIDIA driver (libcuda.so.1, libnvidia-ml.so.1), nvidia-ml-py.
The tool calls run a tiny CUDA program through the driver API (ctypes over libcuda.so.1,
no toolkit needed) that allocates a known amount of device memory and holds it."""

import json
import os
import re
import socket
import time
import urllib.request

import pytest

from tests.helpers import DaemonProc, agentd_cmd

pytestmark = pytest.mark.gpu

MiB = 1 << 20
ALLOC = 256 * MiB

# Allocates $ALLOC_BYTES on CUDA device 0 (the first *visible* one), records the pid and the
# device's UUID as CUDA sees it, then holds the memory until $OUT/<name>.go appears.
CUDA_PROG = r"""
import ctypes, os, sys, time
out, name, size = os.environ["OUT"], sys.argv[1], int(os.environ["ALLOC_BYTES"])
cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
open(f"{out}/{name}.cvd", "w").write(f"[{cvd}]")
cu = ctypes.CDLL("libcuda.so.1")
def check(rc, what):
    if rc != 0:
        open(f"{out}/{name}.err2", "w").write(f"{what} failed: {rc}")
        sys.exit(3)
check(cu.cuInit(0), "cuInit")
n = ctypes.c_int(0)
check(cu.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
dev = ctypes.c_int(0)
check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
uuid = (ctypes.c_ubyte * 16)()
check(cu.cuDeviceGetUuid(uuid, dev), "cuDeviceGetUuid")
ctx = ctypes.c_void_p()
check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
ptr = ctypes.c_uint64()
check(cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)), "cuMemAlloc")
h = bytes(uuid).hex()
u = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
open(f"{out}/{name}.info", "w").write(f"{os.getpid()} {n.value} {u}")
while not os.path.exists(f"{out}/{name}.go"):
    time.sleep(0.05)
"""

POLICY = """\
version: 1
defaults: {agent_class: normal, tool_class: normal}
agent_classes:
  normal: {priority: 400, gpu: {memory_budget: max, priority: 400}}
  tiny: {priority: 100, gpu: {memory_budget: 128Mi, priority: 100, over_budget: kill}}
tool_classes:
  normal: {priority: 50}
  train: {priority: 30, device: gpu, gpu: {fallback: offload}}
  probe: {priority: 30, device: auto}
"""


@pytest.fixture
def real_gpu():
    pynvml = pytest.importorskip("pynvml", reason="pip install nvidia-ml-py")
    from agentd.gpu.nvml import Nvml, NvmlUnavailable
    os.environ.pop("AGENTD_FAKE_NVML", None)
    try:
        nv = Nvml.open(pynvml)
    except NvmlUnavailable as err:
        pytest.fail(f"the gpu marker needs a working NVIDIA GPU: {err}")
    yield nv
    nv.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def start(tmp_path, test_root, metrics=None):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    prog = tmp_path / "cuda_hold.py"
    prog.write_text(CUDA_PROG)
    out = tmp_path / "out"
    out.mkdir()
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy), metrics=metrics or "none",
                   extra_env={"AGENTD_GPU_INTERVAL_S": "0.2"})
    d.start()
    return d, prog, out


def agent(d, prog, out, name, cls, agent_class="normal"):
    import subprocess
    from tests.helpers import REPO
    script = f'"$@" tool --class {cls} -- python3 {prog} {name} 2>"{out}/{name}.err"'
    return subprocess.Popen(agentd_cmd() + ["run", "--name", name, "--class", agent_class, "--", "bash", "-c", script,
                                            "agent"] + agentd_cmd(),
                            env=dict(d.env, OUT=str(out), ALLOC_BYTES=str(ALLOC)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_placed_call_runs_on_the_chosen_gpu_and_is_attributed(tmp_path, test_root, real_gpu):
    port = free_port()
    d, prog, out = start(tmp_path, test_root, metrics=f"127.0.0.1:{port}")
    try:
        p = agent(d, prog, out, "placed", "train")
        pid, visible, cuda_uuid = wait_file(out / "placed.info").split()
        cvd = wait_file(out / "placed.cvd").strip("[]")
        uuids = {dev.uuid for dev in real_gpu.devices()}
        # Placed on exactly one real GPU, named by UUID; CUDA sees that one device and no other.
        assert cvd in uuids and visible == "1" and cuda_uuid == cvd
        # NVML lists the process; the daemon attributes its memory to the agent.
        deadline = time.monotonic() + 20
        held = 0
        while time.monotonic() < deadline and held < ALLOC:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            held = sum(float(v) for v in re.findall(r'agentd_agent_gpu_memory_bytes\{agent="placed",[^}]*\} (\S+)',
                                                    text))
            time.sleep(0.2)
        assert held >= ALLOC, text[-2000:]
        assert any(pr.pid == int(pid) for pr in real_gpu.processes())
        (out / "placed.go").write_text("")
        p.communicate(timeout=60)
        assert p.returncode == 0, (open(out / "placed.err").read(), d.log())
        ev = [e for e in d.events() if e.get("event") == "gpu_placement"]
        assert ev and ev[0]["outcome"] == "gpu"
    finally:
        (out / "placed.go").write_text("")
        d.cleanup()


def test_agent_over_budget_is_killed_on_a_real_gpu(tmp_path, test_root, real_gpu):
    """An `auto` call without GPU history is not placed (all GPUs visible); it allocates
    256 MiB, its agent's budget is 128 MiB, so agentd kills it through its cgroup."""
    d, prog, out = start(tmp_path, test_root)
    try:
        p = agent(d, prog, out, "hog", "probe", agent_class="tiny")
        pid = int(wait_file(out / "hog.info").split()[0])
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid}")
        p.communicate(timeout=60)
        kills = [e for e in d.events() if e.get("event") == "action" and e.get("action") == "kill"]
        assert kills and "GPU memory budget" in kills[0]["reason"]
        assert "GPU memory budget" in open(out / "hog.err").read()
        # The next call of that signature has GPU history now.
        ends = [e for e in d.events() if e.get("event") == "tool_end"]
        assert ends and ends[0]["outcome"] == "killed"
        assert os.path.exists(os.path.join(d.state_dir, "gpu-history.sqlite"))
    finally:
        (out / "hog.go").write_text("")
        d.cleanup()


def test_the_device_program_hides_the_real_gpu_from_a_call(cgfs, test_root, real_gpu):
    """With a real driver the device nodes open outside (nvidiactl, /dev/nvidia0) and CUDA
    initialises; in a cgroup with agentd's device program both are refused."""
    import subprocess
    import sys
    from agentd.kernel.bpf_devguard import DevGuard, nvidia_majors
    nodes = [p for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm") if os.path.exists(p)]
    probe = ("import ctypes, os, sys\nopen(sys.argv[1], 'w').write('0')\nout = []\n"
             "for p in sys.argv[2:]:\n"
             "    try:\n        os.close(os.open(p, os.O_RDWR)); out.append('ok')\n"
             "    except OSError as e:\n        out.append(str(e.errno))\n"
             "out.append(str(ctypes.CDLL('libcuda.so.1').cuInit(0)))\nprint(' '.join(out))\n")
    cgfs.mkdir(test_root)
    cg = f"{test_root}/call"
    cgfs.mkdir(cg)
    here = subprocess.run([sys.executable, "-S", "-c", probe, "/dev/null", *nodes], capture_output=True, text=True)
    assert here.stdout.split() == ["ok"] * len(nodes) + ["0"], here
    with DevGuard(nvidia_majors()) as g:
        g.hide(cgfs.path(cg))
        inside = subprocess.run([sys.executable, "-S", "-c", probe, cgfs.path(cg, "cgroup.procs"), *nodes],
                                capture_output=True, text=True)
    got = inside.stdout.split()
    assert got[:-1] == ["1"] * len(nodes) and got[-1] != "0", inside     # EPERM; cuInit fails
