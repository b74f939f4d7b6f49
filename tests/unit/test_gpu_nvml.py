"""The NVML adapter over the scripted fake and over the real `pynvml` up to the driver call."""

import ctypes.util
import json
import os
import sys

import pytest

from agentd.gpu import gpu_status
from agentd.gpu.fake import FakeNvml
from agentd.gpu.nvml import FAKE_ENV, GpuProcess, Nvml, NvmlError, NvmlUnavailable, load_library

GiB = 1 << 30

SCRIPT = {
    "driver": "550.54.15",
    "devices": [
        {"name": "Fake H100", "uuid": "GPU-aaaa", "memory_total": "80Gi", "memory_other": "1Gi", "utilization": 40,
         "processes": [{"pid": 11, "used": "2Gi"}, {"pid": 12, "used": 512 << 20}]},
        {"name": "Fake L4", "uuid": "GPU-bbbb", "memory_total": 24 * GiB, "utilization": None,
         "processes": [{"pid": 13, "used": None}]},
    ],
}


def test_devices_memory_utilisation_and_processes():
    nv = Nvml.open(FakeNvml(json.loads(json.dumps(SCRIPT))))
    assert nv.driver == "550.54.15" and nv.count == 2
    d0, d1 = nv.devices()
    assert (d0.index, d0.uuid, d0.name) == (0, "GPU-aaaa", "Fake H100")
    assert d0.memory_total == 80 * GiB
    assert d0.memory_used == GiB + 2 * GiB + (512 << 20)
    assert d0.memory_free == d0.memory_total - d0.memory_used
    assert d0.utilization == pytest.approx(0.4)
    assert d1.utilization is None                    # NotSupported is not a failure
    assert nv.processes() == [GpuProcess(11, 0, 2 * GiB), GpuProcess(12, 0, 512 << 20), GpuProcess(13, 1, None)]
    nv.close()


@pytest.mark.parametrize("err,words", [("LibraryNotFound", "libnvidia-ml.so.1"),
                                       ("DriverNotLoaded", "kernel driver is not loaded"),
                                       ("NoPermission", "run agentd as root")])
def test_init_failures_say_why(err, words):
    with pytest.raises(NvmlUnavailable, match=words):
        Nvml.open(FakeNvml({"init_error": err}))


def test_no_device_is_unavailable():
    with pytest.raises(NvmlUnavailable, match="reports no GPU"):
        Nvml.open(FakeNvml({"devices": []}))


def test_a_lost_device_is_an_nvml_error():
    fake = FakeNvml(json.loads(json.dumps(SCRIPT)))
    nv = Nvml.open(fake)
    fake.script["devices"].pop()
    with pytest.raises(NvmlError, match="GPU 1"):
        nv.devices()


def test_binding_absent(monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)      # import pynvml -> ImportError
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py is not installed"):
        load_library()
    st = gpu_status()
    assert st["mode"] == "off" and "nvidia-ml-py is not installed" in st["reason"]


def test_real_binding_up_to_the_driver(monkeypatch):
    """With nvidia-ml-py installed, the real nvmlInit runs: on a host without the NVIDIA
    library it must say so; with the library it must either work or name the driver problem."""
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py not installed (pip install nvidia-ml-py)")
    monkeypatch.delenv(FAKE_ENV, raising=False)
    assert load_library() is pynvml
    if ctypes.util.find_library("nvidia-ml") is None and not os.path.exists("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"):
        with pytest.raises(NvmlUnavailable, match="libnvidia-ml.so.1"):
            Nvml.open(pynvml)
        st = gpu_status()
        assert st["mode"] == "off" and "libnvidia-ml.so.1" in st["reason"]
    else:
        try:
            nv = Nvml.open(pynvml)
        except NvmlUnavailable as err:
            assert "driver" in str(err)
        else:
            assert nv.devices() and nv.count >= 1
            nv.close()


def test_real_binding_driver_not_loaded(monkeypatch):
    """pynvml's own error classes (built from the NVML return code) map to the same reasons."""
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py not installed (pip install nvidia-ml-py)")

    def init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    with pytest.raises(NvmlUnavailable, match="kernel driver is not loaded"):
        Nvml.open(pynvml)


def test_fake_file_is_reread_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps(SCRIPT))
    monkeypatch.setenv(FAKE_ENV, str(path))
    nv = Nvml.open()
    assert len(nv.processes()) == 3
    s = json.loads(json.dumps(SCRIPT))
    s["devices"][0]["processes"] = []
    tmp = tmp_path / "nvml.json.new"
    tmp.write_text(json.dumps(s))
    os.utime(tmp, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
    os.rename(tmp, path)
    assert [p.pid for p in nv.processes()] == [13]
    st = gpu_status()
    assert st["mode"] == "placement and budgets" and "Fake H100" in st["reason"] and "fake NVML" in st["reason"]


def test_mps_detection(tmp_path):
    pipe = tmp_path / "mps"
    names = ["bash", "nvidia-cuda-mps"]
    nv = Nvml(FakeNvml({}), pipe_dir=str(pipe), proc_scan=lambda: names)
    assert not nv.mps_active()                       # no control pipe
    pipe.mkdir()
    (pipe / "control").write_text("")
    assert nv.mps_active()
    names.remove("nvidia-cuda-mps")
    assert not nv.mps_active()                       # a stale pipe directory without the daemon
    assert Nvml(FakeNvml({"mps": True}), pipe_dir=str(tmp_path / "none")).mps_active()


def test_a_missing_or_broken_fake_script_turns_gpu_off(tmp_path, monkeypatch):
    monkeypatch.setenv(FAKE_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(NvmlUnavailable, match="libnvidia-ml.so.1"):
        Nvml.open()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv(FAKE_ENV, str(bad))
    with pytest.raises(NvmlUnavailable, match="bad.json"):
        Nvml.open()
