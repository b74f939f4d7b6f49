"""Can agentd use its BPF programs here? Probed once at start; `agentd doctor` prints it.

The probe really loads the lifecycle program (and unloads it): BTF, privileges,
verifier and libbpf version problems all show up there with libbpf's own message,
which is more honest than guessing from kernel config.
"""

import os

from ..errors import AgentdError
from . import libbpf
from .bpf_objects import object_path
from .probe import BTF_VMLINUX, MEMCG_STRUCT_OPS_TYPE, btf_has


def bpf_status(load=True):
    """{'mode': 'bpf'|'userspace', 'reason': str, ...details} for doctor and the daemon."""
    info = {"mode": "userspace", "reason": "", "libbpf": None, "btf": os.path.exists(BTF_VMLINUX),
            "flavour": None, "memcg_struct_ops": False}
    try:
        info["libbpf"] = libbpf.features()["version"]
    except AgentdError as err:
        info["reason"] = str(err)
        return info
    if not info["btf"]:
        info["reason"] = (f"{BTF_VMLINUX} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF, "
                          "so CO-RE programs cannot be relocated; using /proc polling")
        return info
    info["memcg_struct_ops"] = btf_has(MEMCG_STRUCT_OPS_TYPE)
    for name in ("lifecycle", "memwatch"):
        if not os.path.exists(object_path(name)):
            info["reason"] = f"{object_path(name)} is missing: rebuild with `make -C bpf` or reinstall agentd"
            return info
    if load:
        from .bpf_lifecycle import Lifecycle
        try:
            lc = Lifecycle()
        except AgentdError as err:
            info["reason"] = f"loading the lifecycle program failed: {err}"
            return info
        info["flavour"] = lc.flavour
        fallback = lc.fallback_reason
        lc.close()
        if fallback:
            info["reason"] = f"tp_btf unavailable, using classic tracepoints ({fallback.splitlines()[0]})"
    info["mode"] = "bpf"
    info["reason"] = info["reason"] or f"BTF present, libbpf {info['libbpf']}, programs load"
    return info
