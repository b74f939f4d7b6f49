"""NVML adapter: the only code in agentd that talks to the NVIDIA driver.

It sits over `nvidia-ml-py` (module `pynvml`, NVIDIA's own binding, an optional dependency:
`pip install 'agentd[gpu]'`) or over `agentd.gpu.fake.FakeNvml`, which offers the same calls
scripted from a JSON file, so the daemon's code path is the same with and without a GPU.

What agentd reads: devices (index, UUID, name), memory total/used, utilisation, and the
compute processes on each device with the GPU memory each holds. NVML errors become
`NvmlError` (an AgentdError) once, here; a process that ended between NVML's answer and
our use of its pid is a normal outcome for the caller.
"""

import dataclasses
import logging
import os

from ..errors import FeatureMissing, KernelError
from ..kernel.procfs import ProcFS

log = logging.getLogger("agentd.gpu")

# The environment variable naming a fake NVML script (see fake.py); set only by tests/benchmarks.
FAKE_ENV = "AGENTD_FAKE_NVML"
# Where the MPS control daemon puts its pipes unless CUDA_MPS_PIPE_DIRECTORY says otherwise.
MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"
MPS_CONTROL_COMM = "nvidia-cuda-mps"      # comm of nvidia-cuda-mps-control, cut to 15 characters


class NvmlUnavailable(FeatureMissing):
    """No usable NVML here (binding missing, no driver, no device): GPU features are off."""


class NvmlError(KernelError):
    """An NVML call failed on a device that was working."""


@dataclasses.dataclass(frozen=True)
class Device:
    index: int
    uuid: str
    name: str
    memory_total: int        # bytes
    memory_used: int         # bytes, as the driver counts them (every process, not only agents')
    utilization: float | None   # 0..1 of the last sample period; None when the device does not say

    @property
    def memory_free(self):
        return max(0, self.memory_total - self.memory_used)


@dataclasses.dataclass(frozen=True)
class GpuProcess:
    pid: int
    device: int              # Device.index
    used_bytes: int | None   # None: the driver does not report per-process memory (e.g. some vGPUs)


def _text(v):
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def load_library():
    """The NVML module to use: the fake named by $AGENTD_FAKE_NVML, else `pynvml`.

    Raises NvmlUnavailable with the reason when the binding is not installed."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        from .fake import FakeNvml
        return FakeNvml.from_file(fake)
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed: install it with pip install 'agentd[gpu]' "
                              "(or pip install nvidia-ml-py) to enable GPU placement") from None
    return pynvml


def _reason(lib, err):
    """A sentence for an nvmlInit failure, by NVML error class (same names in pynvml and the fake)."""
    names = {"NVMLError_LibraryNotFound": "the NVIDIA driver's NVML library (libnvidia-ml.so.1) is not "
                                          "installed: no NVIDIA driver on this host",
             "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded (modprobe nvidia, or "
                                          "check the driver installation with nvidia-smi)",
             "NVMLError_NoPermission": "no permission to talk to the NVIDIA driver (run agentd as root)",
             "NVMLError_LibRmVersionMismatch": "the NVIDIA driver and its NVML library differ in version: "
                                               "reboot or reload the driver"}
    for cls in type(err).__mro__:
        if cls.__name__ in names:
            return names[cls.__name__]
    return f"NVML failed to initialise: {err}"


class Nvml:
    """One NVML session. `lib` is `pynvml` or a FakeNvml (same functions, same errors)."""

    def __init__(self, lib, pipe_dir=None, proc_scan=None):
        self.lib = lib
        self.pipe_dir = pipe_dir or os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or MPS_PIPE_DEFAULT
        self.proc_scan = proc_scan      # callable -> iterable of process names (tests); None: /proc
        self.driver = ""
        self.count = 0
        self._handles = []

    @classmethod
    def open(cls, lib=None, **kw):
        """Initialise NVML; NvmlUnavailable says why GPU features are off."""
        lib = lib if lib is not None else load_library()
        nv = cls(lib, **kw)
        try:
            lib.nvmlInit()
        except lib.NVMLError as err:
            raise NvmlUnavailable(_reason(lib, err)) from err
        try:
            nv.driver = _text(lib.nvmlSystemGetDriverVersion())
            nv.count = int(lib.nvmlDeviceGetCount())
            nv._handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(nv.count)]
        except lib.NVMLError as err:
            nv.close()
            raise NvmlUnavailable(f"NVML answered nvmlInit but not the device list: {err}") from err
        if nv.count == 0:
            nv.close()
            raise NvmlUnavailable(f"the NVIDIA driver {nv.driver} reports no GPU")
        return nv

    def close(self):
        try:
            self.lib.nvmlShutdown()
        except self.lib.NVMLError as err:
            log.debug("nvmlShutdown: %s", err)

    def _call(self, what, fn, *args):
        try:
            return fn(*args)
        except self.lib.NVMLError as err:
            raise NvmlError(f"NVML {what}: {err}") from err

    def devices(self):
        out = []
        for i, h in enumerate(self._handles):
            mem = self._call(f"memory of GPU {i}", self.lib.nvmlDeviceGetMemoryInfo, h)
            try:
                util = self.lib.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            except self.lib.NVMLError:
                util = None           # NotSupported on some vGPU/MIG setups: not a failure
            out.append(Device(index=i, uuid=_text(self._call("UUID", self.lib.nvmlDeviceGetUUID, h)),
                              name=_text(self._call("name", self.lib.nvmlDeviceGetName, h)),
                              memory_total=int(mem.total), memory_used=int(mem.used), utilization=util))
        return out

    def processes(self):
        """Compute processes on every device (under MPS also the clients NVML lists separately)."""
        out = []
        for i, h in enumerate(self._handles):
            seen = set()
            lists = [self._call(f"processes of GPU {i}", self.lib.nvmlDeviceGetComputeRunningProcesses, h)]
            try:
                lists.append(self.lib.nvmlDeviceGetMPSComputeRunningProcesses(h))
            except (self.lib.NVMLError, AttributeError):
                pass                  # no MPS, or a driver without the call
            for procs in lists:
                for p in procs:
                    if p.pid in seen:
                        continue
                    seen.add(p.pid)
                    used = p.usedGpuMemory
                    out.append(GpuProcess(pid=int(p.pid), device=i, used_bytes=None if used is None else int(used)))
        return out

    def mps_active(self):
        """Whether an MPS control daemon serves this host: its control pipe exists and the
        process runs. Both, because a stale pipe directory outlives a killed daemon."""
        scripted = getattr(self.lib, "scripted_mps", None)    # the fake says it outright
        if scripted is not None:
            return bool(scripted)
        if not os.path.exists(os.path.join(self.pipe_dir, "control")):
            return False
        names = self.proc_scan() if self.proc_scan else ProcFS().comms()
        return any(n.startswith(MPS_CONTROL_COMM) for n in names)
