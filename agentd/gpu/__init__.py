"""GPUs: per-agent GPU memory budgets and placement of each tool call on a GPU or the CPU.

  nvml.py       the NVML adapter (over nvidia-ml-py's `pynvml`, or the fake), MPS detection
  fake.py       a scripted NVML for tests and bench/gpu.py
  placement.py  pure placement decisions (priority, room, budgets) and the call's environment
  history.py    GPU-memory forecasts by signature (agentd.forecast over gpu-history.sqlite)
  hook.py       the daemon stage: admit/plan/tick, budget actions, stats
  effects.py    what a decision does to a call: environment, offload weight, device program

`build(app)` is what the daemon calls; it raises NvmlUnavailable (a FeatureMissing) saying
why GPU features are off on this host. Environment:
  AGENTD_FAKE_NVML=PATH        use the scripted NVML in PATH (JSON, see fake.py) instead of
                               the driver: tests and benchmarks on hosts without a GPU
  AGENTD_GPU_INTERVAL_S=SEC    how often GPU memory is read and budgets checked (1.0)
"""

import logging
import os

from .nvml import FAKE_ENV, Nvml, NvmlError, NvmlUnavailable

__all__ = ["FAKE_ENV", "Nvml", "NvmlError", "NvmlUnavailable", "build", "device_guard", "gpu_status"]

log = logging.getLogger("agentd.gpu")


def build(app):
    from .history import GpuForecasts
    from .hook import GpuHook
    nv = Nvml.open()
    try:
        devices = nv.devices()
    except NvmlError as err:
        nv.close()
        raise NvmlUnavailable(f"cannot read the GPUs: {err}") from err
    forecasts = GpuForecasts(app.state_dir, max(d.memory_total for d in devices))
    return GpuHook(app, nv, forecasts, interval_s=float(os.environ.get("AGENTD_GPU_INTERVAL_S", "1.0")),
                   devguard=device_guard())


def device_guard():
    """The device program that hides the GPUs from tool calls placed on the CPU (the only
    way for calls detected automatically, whose environment cannot change after exec);
    None, with one warning, where it cannot load."""
    from ..errors import AgentdError
    try:
        from ..kernel.bpf_devguard import DevGuard, nvidia_majors
        return DevGuard(nvidia_majors())
    except AgentdError as err:
        log.warning("GPUs stay visible to tool calls placed on the CPU (only CUDA_VISIBLE_DEVICES hides them, "
                    "which calls detected automatically do not get): the device program cannot load: %s", err)
        return None


def gpu_status():
    """{"mode", "reason"} for `agentd doctor`."""
    try:
        nv = Nvml.open()
    except NvmlUnavailable as err:
        return {"mode": "off", "reason": str(err)}
    try:
        devices = nv.devices()
        mps = nv.mps_active()
    except NvmlError as err:
        return {"mode": "off", "reason": f"cannot read the GPUs: {err}"}
    finally:
        nv.close()
    names = ", ".join(f"{d.index}: {d.name} {d.memory_total >> 30} GiB" for d in devices)
    src = "fake NVML script " + os.environ[FAKE_ENV] if os.environ.get(FAKE_ENV) else "driver " + nv.driver
    return {"mode": "placement and budgets", "reason": f"{len(devices)} GPU(s) ({names}) via {src}; MPS control "
                                                       f"daemon {'running' if mps else 'not running'}"}
