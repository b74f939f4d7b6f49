/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between agentd's BPF programs and its Python side.
 *
 * Everything that crosses the boundary (ring-buffer events, map keys and values,
 * read-only config, flag bits) is defined here, with fixed-width types only, so the
 * same header compiles for the BPF target and for the host (the test in
 * tests/unit/test_bpf_contract.py compiles it with gcc and checks the ctypes mirror in
 * agentd/kernel/bpf_types.py field by field). Change both sides together.
 */
#ifndef AGENTD_H
#define AGENTD_H

#include <linux/types.h>

#define AGENTD_COMM_LEN 16
#define AGENTD_FILENAME_LEN 128
#define AGENTD_ARGV_LEN 256	/* NUL-separated argv head, truncated */
#define AGENTD_MAX_CGROUP_DEPTH 16	/* ancestor levels searched for a watched cgroup */

/* Event kinds: the first __u32 of every ring-buffer record. */
enum agentd_event_type {
	AGENTD_EV_FORK = 1,
	AGENTD_EV_EXEC = 2,
	AGENTD_EV_EXIT = 3,
	AGENTD_EV_MEM = 4,
	AGENTD_EV_NR,
};

/* watched_cgroups values: flag bits per cgroup id. */
#define AGENTD_WATCH_TREE 0x1	/* report lifecycle of this cgroup and its descendants */
#define AGENTD_WATCH_MAIN 0x2	/* an agent's main cgroup: its children's execs are tool-call candidates */
#define AGENTD_WATCH_STOP_EXEC 0x4	/* with MAIN: SIGSTOP a child at exec until user space places it */
#define AGENTD_WATCH_CONTAINERS 0x8	/* an agent's container parent: each cgroup below it is a container's
					 * (or its runtime's); an exec there by a task whose parent lives in
					 * another cgroup is an exec session (with STOP_EXEC: stopped) */
#define AGENTD_WATCH_SESSION_ONLY 0x10	/* with MAIN|STOP_EXEC: stop only a task that leads its session
					 * (the policy's detection.new_session_only, no persistent shells:
					 * no other exec can be a tool call, so none waits for user space) */

/* agentd_proc_event.flags */
#define AGENTD_PF_STOPPED 0x1	/* the program sent SIGSTOP; user space must SIGCONT */
#define AGENTD_PF_MAIN 0x2	/* the task was in a MAIN cgroup when the event fired */
#define AGENTD_PF_PARENT_MAIN 0x4	/* its parent is in the same cgroup (exec only) */
#define AGENTD_PF_STOP_SKIPPED 0x8	/* would have been stopped, but the daemon's heartbeat is stale */
#define AGENTD_PF_SHELL_CHILD 0x10	/* parent is a persistent shell (`shells`): reported, never stopped */
#define AGENTD_PF_CONTAINER 0x20	/* an exec in a container cgroup by a task whose parent is outside it */

/* Lifecycle event (fork, exec, exit): one fixed-size record.
 * fork: pid = the new process, ppid = the forking process.
 * exec: filename and argv are set; sid/pgid are read after exec.
 * exit: exit_code is the wait(2) status (code << 8 | signal). */
struct agentd_proc_event {
	__u32 type;
	__u32 flags;
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id;	/* the task's v2 cgroup id */
	__u64 watched_id;	/* the watched ancestor (or self) that matched */
	__u32 pid;		/* tgid */
	__u32 ppid;
	__u32 sid;
	__u32 pgid;
	__s32 exit_code;
	__u32 argv_len;		/* bytes used in argv */
	char comm[AGENTD_COMM_LEN];
	char filename[AGENTD_FILENAME_LEN];
	char argv[AGENTD_ARGV_LEN];
};

/* Memory-watch event reasons (bits, both may be set). */
#define AGENTD_MEM_OVER_THRESHOLD 0x1
#define AGENTD_MEM_OVER_RATE 0x2

struct agentd_mem_event {
	__u32 type;
	__u32 reason;
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 rss_bytes;	/* summed rss (file+anon+shmem) of the cgroup's processes */
	__u64 threshold_bytes;
	__u64 rate_bytes_per_s;	/* the configured limit */
	__s64 growth_bytes;	/* growth over the current window */
	__u64 window_ns;	/* length of that window so far */
	__u32 pid;		/* the task whose fault crossed the line */
	__u32 _pad;
};

/* mem_limits: cgroup id -> thresholds, written by the daemon. 0 disables a check. */
struct agentd_mem_limit {
	__u64 threshold_bytes;
	__u64 rate_bytes_per_s;
};

/* mem_state: cgroup id -> accounting kept by the program (read by user space). */
struct agentd_mem_state {
	__s64 rss_bytes;
	__u64 win_start_ns;
	__s64 win_start_bytes;
	__u64 last_rate_event_ns;
	__u64 over_threshold;	/* edge trigger: re-armed when usage falls below */
};

/* mm_state: mm pointer -> the cgroup its rss is attributed to, and the amount. */
struct agentd_mm_state {
	__u64 cgroup_id;
	__s64 rss_bytes;	/* charged to the cgroup: the mm's rss less base_bytes */
	__s64 base_bytes;	/* rss a fork child inherited (shared with its parent), not charged */
};

/* stats array map (both programs): counters indexed by these ids. */
enum agentd_stat {
	AGENTD_STAT_LOST = 0,		/* ring buffer full: an event was dropped */
	AGENTD_STAT_STOPPED,		/* tasks stopped at exec for placement */
	AGENTD_STAT_MEM_EVENTS,		/* memory-watch events emitted */
	AGENTD_STAT_STOP_SKIPPED,	/* execs not stopped: the daemon's heartbeat was stale */
	AGENTD_STAT_HELD_FULL,		/* execs not stopped: the `held` map was full */
	AGENTD_STAT_RELEASED,		/* stopped tasks the exec watchdog resumed (the daemon did not) */
	AGENTD_STAT_NR,
};

/* Read-only config (.rodata), set by the loader before load. */
struct agentd_lifecycle_config {
	__u32 report_all;	/* 1: ignore watched_cgroups (tests, debugging) */
	/* 0: wake the reader on every event. N: wake it only once N bytes are waiting (or
	 * for an event that stopped a task); the reader also drains on a timer. Wake-ups
	 * cost an inter-processor interrupt, which is expensive in a VM. */
	__u32 batch_bytes;
};

/* heartbeat array map (one entry, key 0), written by the daemon's event loop.
 * A task is stopped at exec only while now - beat_ns <= max_age_ns: a daemon that is
 * stopped or hung must never leave an agent's tool calls stopped. max_age_ns 0 turns the
 * check off (programs loaded without a daemon, e.g. benchmarks). */
struct agentd_heartbeat {
	__u64 beat_ns;		/* CLOCK_MONOTONIC (bpf_ktime_get_ns, time.monotonic_ns) */
	__u64 max_age_ns;	/* detection.stop_timeout_s */
};

/* held hash map: pid -> a task stopped at exec that user space has not resumed yet.
 * The program adds the entry before it stops the task; the daemon deletes it after
 * SIGCONT; the exec watchdog (agentd/kernel/exec_watchdog.py) resumes and deletes
 * entries older than max_age_ns, so a daemon that hangs right after a stop releases
 * its tasks anyway. start_boottime_ns tells a reused pid apart. */
struct agentd_held {
	__u64 stop_ns;			/* bpf_ktime_get_ns() at the stop */
	__u64 start_boottime_ns;	/* task->start_boottime: /proc/PID/stat starttime */
};
#define AGENTD_HELD_MAX 4096

/* shells hash map: tgid -> task->start_boottime of a persistent shell in a main cgroup
 * (detection.tool_parents). A job-control shell waits with WUNTRACED: a child stopped at
 * exec would show as a stopped job ("[1]+ Stopped", status 147), so its children are
 * reported without a stop and placed right after their exec. */
#define AGENTD_SHELLS_MAX 1024
#define AGENTD_NS_PER_TICK 10000000	/* ns per USER_HZ tick (100 Hz on every architecture agentd builds for) */

struct agentd_memwatch_config {
	__u64 window_ns;	/* growth-rate window */
	__u32 page_shift;
	__u32 _pad;
};

/* Device guard (devguard.bpf.c): the character-device majors a tool call may not open. */
#define AGENTD_DEVGUARD_MAX_MAJORS 8

struct agentd_devguard_config {
	__u32 nr_majors;	/* entries of majors[] in use */
	__u32 majors[AGENTD_DEVGUARD_MAX_MAJORS];
};

/* Egress shaping (egress.bpf.c): a rate per cgroup — an agent, a tool call — set by the
 * daemon. egress_limits hash map: cgroup id -> struct agentd_egress. The daemon writes
 * rate and burst; the program keeps the clock and the counters (the daemon reads them
 * and never writes them back, so an update keeps them: it writes the whole value only
 * when it adds the entry, and the rate through a lookup-modify-update otherwise).
 * Two modes: with fq on the device, rate_bps gives departure times (EDT); where the
 * kernel has no fq, rate_bps is 0 and classid names an htb class with the rate, which
 * the program selects through skb->priority (the deepest level's class wins). A packet
 * counts in one entry only, its deepest level's (bytes, packets, delayed, drops): an
 * agent's counters are the sum of its entries'. */
#define AGENTD_EGRESS_MAX 4096
#define AGENTD_EGRESS_LEVELS 8	/* ancestor levels below the attach point searched */

struct agentd_egress {
	__u64 rate_bps;		/* bytes per second; 0: count only */
	__u64 burst_ns;		/* how far the clock may lag now: a burst of rate x burst_ns */
	__u64 next_ns;		/* the clock: earliest departure of the next packet (CLOCK_MONOTONIC) */
	__u64 bytes;		/* passed, of the cgroups this is the deepest entry of */
	__u64 packets;		/* passed, as bytes */
	__u64 delayed;		/* passed with a departure time later than now */
	__u64 drops;		/* dropped: departure past the horizon */
	__u32 classid;		/* htb mode: the class (major:minor) the packet is queued in; 0: none */
	__u32 _pad;
};

struct agentd_egress_config {
	__u64 horizon_ns;	/* drop a packet whose departure is further away (fq's own horizon is 10 s) */
	__u32 first_level;	/* cgroup level of the attach point's children (agents' parents' level + 1) */
	__u32 _pad;
};

#endif
