"""ctypes mirror of bpf/scx_agentd.h (the scheduler's BPF <-> Python contract).

The loader is bpf_scx.py (beside the other BPF loaders); the CPU stage (agentd/sched/)
reads its constants. tests/unit/test_sched_contract.py checks every constant against the header and every
struct against the BTF of the compiled object: change both sides together.
"""

import ctypes as _c

MAX_AGENTS = 64
MAX_CGROUPS = 8192
MAX_CPUS = 256
WEIGHT_DFL = 100

DSQ_INTERACTIVE = 1
DSQ_AGENT_BASE = 0x100

LAT_INTERACTIVE, LAT_NORMAL, LAT_BATCH = 0, 1, 2
NR_LAT = 3
LATENCY = {"interactive": LAT_INTERACTIVE, "normal": LAT_NORMAL, "batch": LAT_BATCH}

STATS = ("enqueue", "direct", "interactive", "preempt", "demoted", "unknown")
NR_STATS = len(STATS)

EXIT_REASON_LEN = 128
EXIT_MSG_LEN = 256

# enum scx_exit_kind (include/linux/sched/ext.h): what ops.exit reports.
EXIT_KINDS = {0: "none", 1: "done", 64: "unregistered", 65: "unregistered by BPF",
              66: "unregistered by the kernel", 67: "sysrq", 1024: "error", 1025: "BPF error",
              1026: "stall (watchdog)"}


class CgroupEntry(_c.Structure):
    _fields_ = [("slot", _c.c_uint32), ("weight", _c.c_uint32), ("latency", _c.c_uint32),
                ("pad", _c.c_uint32), ("vtime", _c.c_uint64)]


class AgentEntry(_c.Structure):
    _fields_ = [("weight", _c.c_uint32), ("pad", _c.c_uint32)]


class Config(_c.Structure):
    _fields_ = [("slice_ns", _c.c_uint64 * NR_LAT), ("wake_lag_ns", _c.c_uint64),
                ("nr_cpus", _c.c_uint32), ("preempt", _c.c_uint32)]


class ExitInfo(_c.Structure):
    _fields_ = [("kind", _c.c_int64), ("exit_code", _c.c_int64),
                ("reason", _c.c_char * EXIT_REASON_LEN), ("msg", _c.c_char * EXIT_MSG_LEN)]

    def describe(self):
        kind = EXIT_KINDS.get(self.kind, f"kind {self.kind}")
        parts = [kind]
        for text in (self.reason, self.msg):
            t = text.decode(errors="replace").strip()
            if t and t not in parts:
                parts.append(t)
        return ": ".join(parts)


# The Python names of the C structs, for the contract test.
STRUCTS = {"scx_agentd_cgroup": CgroupEntry, "scx_agentd_agent": AgentEntry,
           "scx_agentd_config": Config, "scx_agentd_exit": ExitInfo}
