"""A scripted stand-in for `pynvml`: the same functions and error classes, devices and
processes described by a dict or a JSON file. Tests and bench/gpu.py use it; the daemon
uses it when $AGENTD_FAKE_NVML names a file.

Script (sizes are bytes or strings such as "80Gi"; every key optional):

    {
      "init_error": null,            # "LibraryNotFound" | "DriverNotLoaded" | "NoPermission":
                                     #   nvmlInit raises that NVML error, as pynvml would
      "driver": "550.54.15",
      "mps": false,                  # an MPS control daemon runs
      "devices": [
        {"name": "Fake H100", "uuid": "GPU-fake-0", "memory_total": "80Gi",
         "memory_other": "1Gi",      # memory held outside any listed process (driver, X)
         "utilization": 40,          # percent; null: the device does not report it
         "processes": [{"pid": 1234, "used": "2Gi"}]}   # used: null = not reported
      ]
    }

A file is read again whenever its modification time changes, so a test can move processes
and memory under a running daemon by rewriting it (write a temporary file and rename it).
Memory used on a device = memory_other + the sum of its processes' memory.
"""

import json
import os
import types

from ..units import parse_size


class NVMLError(Exception):
    def __init__(self, msg="Unknown Error"):
        super().__init__(msg)
        self.msg = msg

    def __str__(self):
        return self.msg


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


class NVMLError_NoPermission(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


_INIT_ERRORS = {
    "LibraryNotFound": (NVMLError_LibraryNotFound, "NVML Shared Library Not Found"),
    "DriverNotLoaded": (NVMLError_DriverNotLoaded, "Driver Not Loaded"),
    "NoPermission": (NVMLError_NoPermission, "Insufficient Permissions"),
}


def _size(v):
    return 0 if v is None else parse_size(v, None) if isinstance(v, str) else int(v)


class FakeNvml:
    """Module-like object with pynvml's names. `script` may be replaced or mutated at any time."""

    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, script=None, path=None):
        self.path = path
        self._mtime = None
        self.script = script if script is not None else {}
        self.initialised = False
        self.calls = 0              # NVML calls answered (benchmarks report the polling cost)

    @classmethod
    def from_file(cls, path):
        return cls(path=path)         # read at nvmlInit, whose errors say what is wrong

    def _reload(self):
        if self.path is None:
            return
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            raise NVMLError_LibraryNotFound(f"fake NVML script {self.path} is missing") from None
        if mtime != self._mtime:
            try:
                with open(self.path) as f:
                    self.script = json.load(f)
            except (OSError, ValueError) as err:
                raise NVMLError(f"fake NVML script {self.path}: {err}") from None
            self._mtime = mtime

    def _devices(self):
        if not self.initialised:
            raise NVMLError_Uninitialized("Uninitialized")
        self._reload()
        self.calls += 1
        return self.script.get("devices") or []

    @property
    def scripted_mps(self):
        """The script's "mps" (None when it does not say: then the real detection runs)."""
        self._reload()
        return self.script.get("mps")

    # --- the pynvml calls agentd makes ------------------------------------------------
    def nvmlInit(self):
        self._reload()
        err = self.script.get("init_error")
        if err:
            cls, msg = _INIT_ERRORS.get(err, (NVMLError, err))
            raise cls(msg)
        self.initialised = True

    def nvmlShutdown(self):
        if not self.initialised:
            raise NVMLError_Uninitialized("Uninitialized")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self):
        self._devices()
        return self.script.get("driver", "0.0-fake")

    def nvmlDeviceGetCount(self):
        return len(self._devices())

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self._devices()):
            raise NVMLError(f"Invalid Argument: no GPU {i}")
        return i                     # handles are indices; the script is re-read per call

    def _dev(self, h):
        devs = self._devices()
        if h >= len(devs):
            raise NVMLError("GPU is lost")
        return devs[h]

    def nvmlDeviceGetName(self, h):
        return self._dev(h).get("name", "Fake GPU")

    def nvmlDeviceGetUUID(self, h):
        return self._dev(h).get("uuid", f"GPU-fake-{h}")

    def nvmlDeviceGetMemoryInfo(self, h):
        d = self._dev(h)
        total = _size(d.get("memory_total", "16Gi"))
        used = _size(d.get("memory_other")) + sum(_size(p.get("used")) for p in d.get("processes") or [])
        return types.SimpleNamespace(total=total, used=min(used, total), free=max(0, total - used))

    def nvmlDeviceGetUtilizationRates(self, h):
        u = self._dev(h).get("utilization", 0)
        if u is None:
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(gpu=int(u), memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=int(p["pid"]),
                                      usedGpuMemory=None if p.get("used", 0) is None else _size(p.get("used")))
                for p in self._dev(h).get("processes") or []]

    def nvmlDeviceGetMPSComputeRunningProcesses(self, h):
        self._dev(h)
        return []                    # scripted MPS clients are listed under "processes"
