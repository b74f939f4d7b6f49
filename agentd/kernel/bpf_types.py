"""Python mirror of bpf/agentd.h: constants and ctypes structures, field for field.

tests/unit/test_bpf_contract.py compiles agentd.h with gcc and checks every constant,
struct size and field offset here against it, so a change on one side without the
other fails the test suite rather than corrupting events at run time.
"""

import ctypes as C

AGENTD_COMM_LEN = 16
AGENTD_FILENAME_LEN = 128
AGENTD_ARGV_LEN = 256
AGENTD_MAX_CGROUP_DEPTH = 16
AGENTD_DEVGUARD_MAX_MAJORS = 8

# enum agentd_event_type
AGENTD_EV_FORK = 1
AGENTD_EV_EXEC = 2
AGENTD_EV_EXIT = 3
AGENTD_EV_MEM = 4
AGENTD_EV_NR = 5

AGENTD_WATCH_TREE = 0x1
AGENTD_WATCH_MAIN = 0x2
AGENTD_WATCH_STOP_EXEC = 0x4
AGENTD_WATCH_CONTAINERS = 0x8
AGENTD_WATCH_SESSION_ONLY = 0x10

AGENTD_PF_STOPPED = 0x1
AGENTD_PF_MAIN = 0x2
AGENTD_PF_PARENT_MAIN = 0x4
AGENTD_PF_STOP_SKIPPED = 0x8
AGENTD_PF_SHELL_CHILD = 0x10
AGENTD_PF_CONTAINER = 0x20
AGENTD_HELD_MAX = 4096
AGENTD_SHELLS_MAX = 1024
AGENTD_NS_PER_TICK = 10000000

AGENTD_MEM_OVER_THRESHOLD = 0x1
AGENTD_MEM_OVER_RATE = 0x2

# enum agentd_stat
AGENTD_STAT_LOST = 0
AGENTD_STAT_STOPPED = 1
AGENTD_STAT_MEM_EVENTS = 2
AGENTD_STAT_STOP_SKIPPED = 3
AGENTD_STAT_HELD_FULL = 4
AGENTD_STAT_RELEASED = 5
AGENTD_STAT_NR = 6


class agentd_proc_event(C.Structure):
    _fields_ = [
        ("type", C.c_uint32),
        ("flags", C.c_uint32),
        ("ts_ns", C.c_uint64),
        ("cgroup_id", C.c_uint64),
        ("watched_id", C.c_uint64),
        ("pid", C.c_uint32),
        ("ppid", C.c_uint32),
        ("sid", C.c_uint32),
        ("pgid", C.c_uint32),
        ("exit_code", C.c_int32),
        ("argv_len", C.c_uint32),
        ("comm", C.c_char * AGENTD_COMM_LEN),
        ("filename", C.c_char * AGENTD_FILENAME_LEN),
        ("argv", C.c_char * AGENTD_ARGV_LEN),
    ]


class agentd_mem_event(C.Structure):
    _fields_ = [
        ("type", C.c_uint32),
        ("reason", C.c_uint32),
        ("ts_ns", C.c_uint64),
        ("cgroup_id", C.c_uint64),
        ("rss_bytes", C.c_uint64),
        ("threshold_bytes", C.c_uint64),
        ("rate_bytes_per_s", C.c_uint64),
        ("growth_bytes", C.c_int64),
        ("window_ns", C.c_uint64),
        ("pid", C.c_uint32),
        ("_pad", C.c_uint32),
    ]


class agentd_mem_limit(C.Structure):
    _fields_ = [
        ("threshold_bytes", C.c_uint64),
        ("rate_bytes_per_s", C.c_uint64),
    ]


class agentd_mem_state(C.Structure):
    _fields_ = [
        ("rss_bytes", C.c_int64),
        ("win_start_ns", C.c_uint64),
        ("win_start_bytes", C.c_int64),
        ("last_rate_event_ns", C.c_uint64),
        ("over_threshold", C.c_uint64),
    ]


class agentd_mm_state(C.Structure):
    _fields_ = [
        ("cgroup_id", C.c_uint64),
        ("rss_bytes", C.c_int64),
        ("base_bytes", C.c_int64),
    ]


class agentd_lifecycle_config(C.Structure):
    _fields_ = [
        ("report_all", C.c_uint32),
        ("batch_bytes", C.c_uint32),
    ]


class agentd_heartbeat(C.Structure):
    _fields_ = [
        ("beat_ns", C.c_uint64),
        ("max_age_ns", C.c_uint64),
    ]


class agentd_held(C.Structure):
    _fields_ = [
        ("stop_ns", C.c_uint64),
        ("start_boottime_ns", C.c_uint64),
    ]


class agentd_memwatch_config(C.Structure):
    _fields_ = [
        ("window_ns", C.c_uint64),
        ("page_shift", C.c_uint32),
        ("_pad", C.c_uint32),
    ]


class agentd_devguard_config(C.Structure):
    _fields_ = [
        ("nr_majors", C.c_uint32),
        ("majors", C.c_uint32 * AGENTD_DEVGUARD_MAX_MAJORS),
    ]


AGENTD_EGRESS_MAX = 4096
AGENTD_EGRESS_LEVELS = 8


class agentd_egress(C.Structure):
    _fields_ = [
        ("rate_bps", C.c_uint64),
        ("burst_ns", C.c_uint64),
        ("next_ns", C.c_uint64),
        ("bytes", C.c_uint64),
        ("packets", C.c_uint64),
        ("delayed", C.c_uint64),
        ("drops", C.c_uint64),
        ("classid", C.c_uint32),
        ("_pad", C.c_uint32),
    ]


class agentd_egress_config(C.Structure):
    _fields_ = [
        ("horizon_ns", C.c_uint64),
        ("first_level", C.c_uint32),
        ("_pad", C.c_uint32),
    ]


STRUCTS = (agentd_proc_event, agentd_mem_event, agentd_mem_limit, agentd_mem_state, agentd_mm_state,
           agentd_lifecycle_config, agentd_heartbeat, agentd_held, agentd_memwatch_config, agentd_devguard_config,
           agentd_egress, agentd_egress_config)
