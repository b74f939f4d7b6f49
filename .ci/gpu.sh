#!/bin/bash
# agentd CI on a machine with an NVIDIA GPU: the real-GPU tests (marker `gpu`,
# tests/host/test_gpu_real.py: placement by UUID, attribution through NVML, budgets, the
# device program against the driver's own device nodes). Plain pytest and .ci/run deselect
# them (no GPU there); this is the runner that selects them. Run as root; extra arguments
# go to pytest. Exit status: pytest's, or 2 when the machine cannot run them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The driver is the machine's, not something this script installs: without it the tests
# cannot prove anything, so stop with a message instead of letting them fail one by one.
for lib in libnvidia-ml.so.1 libcuda.so.1; do
    if ! ldconfig -p | grep -q "$lib"; then
        echo "gpu.sh: $lib not found: this machine has no NVIDIA driver (install the driver, then rerun)" >&2
        exit 2
    fi
done

# Everything else agentd needs (packages, the Python package with its launcher, BPF
# objects and the `gpu` extra, nvidia-ml-py), as on any agentd host.
bash .ci/setup.sh
python3 - <<'PY'
import pynvml
pynvml.nvmlInit()
n = pynvml.nvmlDeviceGetCount()
print(f"gpu.sh: {n} NVIDIA GPU(s), driver {pynvml.nvmlSystemGetDriverVersion()}")
if n == 0:
    raise SystemExit(2)
PY

# -m gpu replaces the default addopts' `-m 'not kernel and not gpu'`.
exec python3 -m pytest -m gpu -p no:cacheprovider tests/host/test_gpu_real.py "$@"
