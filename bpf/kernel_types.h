/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types agentd's BPF programs read, and nothing else.
 *
 * agentd does not ship or generate a full vmlinux.h (see bpf/README.md): every struct
 * below carries preserve_access_index, so clang records each field access as a CO-RE
 * relocation and libbpf re-computes the offset from the *running* kernel's BTF at load
 * time. Only the field names and kinds must match the kernel; layout, padding and the
 * other members of these structs do not matter. Adding a field here is adding a
 * dependency on the kernel: name the kernel versions that have it.
 */
#ifndef AGENTD_KERNEL_TYPES_H
#define AGENTD_KERNEL_TYPES_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef int pid_t;
typedef _Bool bool;

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

struct kernfs_node {
	u64 id;			/* the cgroup id on v2 (inode number), 5.5+ */
};

struct cgroup {
	struct kernfs_node *kn;
	int level;
};

struct css_set {
	struct cgroup *dfl_cgrp;	/* the task's cgroup on the v2 hierarchy */
};

struct upid {
	int nr;
};

struct pid {
	struct upid numbers[1];	/* flexible in the kernel; [0] is the init-namespace pid */
};

/* enum pid_type: stable since 4.19 */
#define AGENTD_PIDTYPE_PGID 2
#define AGENTD_PIDTYPE_SID 3

struct signal_struct {
	struct pid *pids[4];
};

struct percpu_counter {
	s64 count;
};

/* mm_struct.rss_stat became an array of percpu_counter in 6.2 (before: struct mm_rss_stat). */
struct mm_struct {
	struct percpu_counter rss_stat[4];
	unsigned long arg_start;
	unsigned long arg_end;
};

/* Anonymous enum in the kernel (mm_types_task.h), values unchanged since 2.6. */
#define AGENTD_MM_FILEPAGES 0
#define AGENTD_MM_ANONPAGES 1
#define AGENTD_MM_SWAPENTS 2
#define AGENTD_MM_SHMEMPAGES 3

/* task_struct.flags bit, set by fork and cleared by exec: unchanged since 2.6. */
#define AGENTD_PF_FORKNOEXEC 0x00000040

struct task_struct {
	unsigned int flags;
	struct task_struct *group_leader;
	pid_t pid;
	pid_t tgid;
	int exit_code;
	char comm[16];
	struct task_struct *real_parent;
	struct mm_struct *mm;
	struct signal_struct *signal;
	struct css_set *cgroups;
	__u64 start_boottime;	/* ns since boot: /proc/PID/stat starttime in clock ticks */
};

struct linux_binprm {
	const char *filename;
};

/* Classic tracepoint records, used only when tp_btf cannot attach. */
struct trace_entry {
	unsigned short type;
};

struct trace_event_raw_sched_process_fork {
	struct trace_entry ent;
	pid_t parent_pid;
	pid_t child_pid;
};

struct trace_event_raw_sched_process_exec {
	struct trace_entry ent;
	u32 __data_loc_filename;	/* offset (low 16 bits) of the string in the record */
	pid_t pid;
	pid_t old_pid;
};

struct trace_event_raw_sched_process_template {
	struct trace_entry ent;
	pid_t pid;
};

#pragma clang attribute pop

#endif
