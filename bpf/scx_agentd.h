/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between agentd's sched_ext scheduler (scx_agentd.bpf.c) and its Python
 * side (agentd/sched/contract.py). Fixed-width types only, no kernel types, so the
 * header also compiles for the host: tests/unit/test_sched_contract.py checks the
 * ctypes mirror against the BTF of the compiled object. Change both sides together.
 *
 * Model: every agent owns a slot (0 is "tasks agentd does not know": SCHED_EXT tasks
 * in cgroups without an entry). Agents compete by weighted virtual time; inside an
 * agent its cgroups (main process, tool calls) compete by their own weighted virtual
 * time. Interactive work waits in its own queue, consulted before any agent's.
 */
#ifndef SCX_AGENTD_H
#define SCX_AGENTD_H

#include <linux/types.h>

#define SCX_AGENTD_MAX_AGENTS 64	/* slots, slot 0 reserved for unknown cgroups */
#define SCX_AGENTD_MAX_CGROUPS 8192	/* cgroup entries (agent main + tool calls) */
#define SCX_AGENTD_MAX_CPUS 256		/* per-CPU state array size */
#define SCX_AGENTD_WEIGHT_DFL 100	/* cpu.weight scale: 1..10000, default 100 */

/* Custom DSQ ids (below 2^63: the kernel's built-in DSQs have the top bit set). */
#define SCX_AGENTD_DSQ_INTERACTIVE 1
#define SCX_AGENTD_DSQ_AGENT_BASE 0x100	/* + slot */

/* Latency classes (the policy's tool_classes.*.latency). */
enum scx_agentd_latency {
	SCX_AGENTD_LAT_INTERACTIVE = 0,
	SCX_AGENTD_LAT_NORMAL = 1,
	SCX_AGENTD_LAT_BATCH = 2,
	SCX_AGENTD_NR_LAT,
};

/* `cgroups` map: key __u64 cgroup id (v2 inode number) -> value. Written by the daemon
 * when an agent or a tool call starts, deleted when it ends; `vtime` belongs to the
 * scheduler (the daemon writes 0 once). */
struct scx_agentd_cgroup {
	__u32 slot;		/* the agent's slot, 1..MAX_AGENTS-1 */
	__u32 weight;		/* weight among the agent's cgroups (cpu.weight scale) */
	__u32 latency;		/* enum scx_agentd_latency */
	__u32 pad;
	__u64 vtime;		/* scheduler-owned: weighted CPU time of this cgroup */
};

/* `agents` array map: index slot -> value, written by the daemon. */
struct scx_agentd_agent {
	__u32 weight;		/* weight among agents (cpu.weight scale); 0 = slot unused */
	__u32 pad;
};

/* Read-only config, written into .rodata before load. */
struct scx_agentd_config {
	__u64 slice_ns[SCX_AGENTD_NR_LAT];	/* time slice per latency class */
	__u64 wake_lag_ns;		/* credit an agent or cgroup keeps across a sleep */
	__u32 nr_cpus;			/* possible CPUs (<= MAX_CPUS) */
	__u32 preempt;			/* 1: an interactive wake-up preempts non-interactive work */
};

/* `stats` array map indices (one __u64 counter each). */
enum scx_agentd_stat {
	SCX_AGENTD_STAT_ENQUEUE = 0,	/* ops.enqueue calls */
	SCX_AGENTD_STAT_DIRECT,		/* dispatched straight to an idle CPU */
	SCX_AGENTD_STAT_INTERACTIVE,	/* interactive, queued without a preempt kick */
	SCX_AGENTD_STAT_PREEMPT,	/* interactive wake-ups that kicked a busy CPU to preempt */
	SCX_AGENTD_STAT_DEMOTED,	/* interactive tasks that used a whole slice */
	SCX_AGENTD_STAT_UNKNOWN,	/* tasks whose cgroup has no entry (slot 0) */
	SCX_AGENTD_NR_STATS,
};

#define SCX_AGENTD_EXIT_REASON_LEN 128
#define SCX_AGENTD_EXIT_MSG_LEN 256

/* `exit_info` array map, one entry: filled by ops.exit when the kernel ejects or
 * unloads the scheduler, so the daemon can log why. */
struct scx_agentd_exit {
	__s64 kind;		/* enum scx_exit_kind: 0 none, 1 done, 64+ unregistered, 1024+ error */
	__s64 exit_code;
	char reason[SCX_AGENTD_EXIT_REASON_LEN];
	char msg[SCX_AGENTD_EXIT_MSG_LEN];
};

#endif
