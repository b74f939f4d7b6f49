"""GPU placement's CPU side in a real daemon on a kernel with the cpu controller, the NVML
scripted through $AGENTD_FAKE_NVML (a GPU with no room left):
- a call offloaded to the CPU runs with its class's offload cpu.weight in its real
  cpu.weight file (the CPU stage writes weights after the GPU stage decided);
- its cgroup has agentd's device program: an open of a c 195 0 node made by mknod fails
  with EPERM inside, while the same open outside reaches the (absent) driver: ENXIO;
- the same holds for a `device: auto` call with a policy prior that is detected
  automatically (its environment was fixed at exec: the device program is what hides the GPU).
"""

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from agentd.kernel.bpf_devguard import NVIDIA_MAJOR, DevGuard
from tests.helpers import REPO, agentd_cmd

from .kernel_support import running_daemon, wait_for

pytestmark = pytest.mark.kernel

GiB = 1 << 30

POLICY = """\
version: 1
agent_classes:
  normal: {gpu: {memory_budget: max}}
tool_classes:
  normal: {priority: 50}
  train: {priority: 30, device: gpu, gpu: {fallback: offload, offload_cpu_weight: 300}}
  probe: {priority: 40, device: auto, gpu: {offload_cpu_weight: 250}}
tool_rules:
  - {name: gen, match: {argv_regex: '\\bgen\\.py\\b'}, class: probe, gpu: {prior: 12Gi}}
cpu:
  scheduler: weights
"""

# Opens the node argv[1] read-write; writes the outcome ("ok" or the errno), its own
# cgroup's cpu.weight and its cgroup to argv[2].
PROBE = r"""
import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDWR))
    r = "ok"
except OSError as e:
    r = str(e.errno)
cg = open("/proc/self/cgroup").read().strip().split("::", 1)[1]
w = open(f"/sys/fs/cgroup{cg}/cpu.weight").read().strip()
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(f"{r} {w} {cg}")
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
"""


def dev_folder(tmp_path):
    """A folder where device nodes open (a tmpfs of our own if tmp is mounted nodev)."""
    d = tmp_path / "dev"
    d.mkdir()
    if os.statvfs(d).f_flag & os.ST_NODEV:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "agentd-test-dev", str(d)], check=True)
    return d


def unmount(d):
    subprocess.run(["umount", str(d)], capture_output=True)


def open_errno(path):
    try:
        os.close(os.open(path, os.O_RDWR))
        return "ok"
    except OSError as e:
        return e.errno


def read_result(path, timeout=120):
    wait_for(lambda: os.path.exists(path), timeout, f"{path} written")
    code, weight, cg = open(path).read().split(" ", 2)
    return (code if code == "ok" else int(code)), int(weight), cg


def test_device_program_refuses_the_gpu_in_a_cgroup_only(cgtree, tmp_path):
    d = dev_folder(tmp_path)
    try:
        node = str(d / "nvidia0")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, 0))
        call = cgtree.child("call")
        out = str(tmp_path / "direct")
        with DevGuard([NVIDIA_MAJOR]) as g:
            g.hide(cgtree.fs.path(call))
            p = cgtree.spawn(call, [sys.executable, "-S", "-c", PROBE, node, out])
            p.wait(120)
            code, _, cg = read_result(out)
            assert cg == "/" + call and code == errno.EPERM
            assert open_errno(node) == errno.ENXIO
    finally:
        unmount(d)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cgfs):
    tmp = tmp_path_factory.mktemp("gpu")
    nvml = tmp / "nvml.json"
    nvml.write_text(json.dumps({"driver": "550.0-test", "mps": False, "devices": [
        {"name": "Fake GPU", "uuid": "GPU-test-0", "memory_total": 16 * GiB, "memory_other": 15 * GiB,
         "utilization": 10, "processes": []}]}))
    with running_daemon(cgfs, tmp, "gpu", POLICY, extra_env={"AGENTD_FAKE_NVML": str(nvml)}) as d:
        yield d


def run_agent(d, name, script):
    return subprocess.run(agentd_cmd() + ["run", "--name", name, "--", "bash", "-c", script, "agent",
                                          *agentd_cmd()],
                          env=d.env, cwd=REPO, capture_output=True, text=True, timeout=200)


def test_offloaded_calls_run_with_the_offload_weight_and_no_gpu(daemon, tmp_path):
    d = dev_folder(tmp_path)
    try:
        node = str(d / "nvidia0")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, 0))
        (tmp_path / "gen.py").write_text(PROBE)
        launched, auto = str(tmp_path / "launched"), str(tmp_path / "auto")
        py = f"{sys.executable} -S"
        # One call through `agentd tool` (class train: device gpu, 300), one detected
        # automatically (rule gen: device auto with a 12 GiB prior, class weight 250).
        r = run_agent(daemon, "gpuk", f'"$@" tool --class train -- {py} -c \'{PROBE}\' {node} {launched}; '
                                      f'{py} {tmp_path}/gen.py {node} {auto}; true')
        assert r.returncode == 0, (r.stderr, daemon.log()[-3000:])
        code, weight, cg = read_result(launched)
        assert "/tools/" in cg and code == errno.EPERM and weight == 300, (code, weight, cg)
        code, weight, cg = read_result(auto)
        assert "/tools/" in cg and code == errno.EPERM and weight == 250, (code, weight, cg)
        assert open_errno(node) == errno.ENXIO              # outside the calls' cgroups
        ev = [e for e in daemon.events() if e.get("event") == "gpu_placement"]
        assert [(e["outcome"], e["devices_hidden"]) for e in ev] == [("offload", True)] * 2, ev
        ends = [e for e in daemon.events() if e.get("event") == "tool_end" and e["agent"] == "gpuk"]
        limits = {e["tool_class"]: e["limits"].get("cpu.weight") for e in ends}
        assert limits == {"train": "300", "probe": "250"}, limits
        assert {e["tool_class"]: e["origin"] for e in ends} == {"train": "launcher", "probe": "auto"}
    finally:
        unmount(d)
