// SPDX-License-Identifier: GPL-2.0
/*
 * Process lifecycle of the cgroups agentd watches: fork, exec (binary + argv head) and
 * exit (wait status), reported through the `events` ring buffer.
 *
 * Scope: a task is reported when its own v2 cgroup, or one of its ancestors flagged
 * AGENTD_WATCH_TREE, is in `watched_cgroups`. Ancestors are found with
 * bpf_get_current_ancestor_cgroup_id(), so the daemon registers an agent's root cgroup
 * once and every tool-call cgroup created below it is covered without a map update.
 *
 * Tool-call placement: when a task in a cgroup flagged AGENTD_WATCH_MAIN|STOP_EXEC
 * execs and its parent lives in the same cgroup, the program stops it (SIGSTOP is
 * delivered before the first instruction of the new image runs) and flags the event;
 * user space moves it into its tool-call cgroup and sends SIGCONT. Because the task
 * cannot run, it cannot fork before it is moved: every descendant starts in the right
 * cgroup. If the event cannot be reported (ring buffer full) the task is not stopped.
 * With AGENTD_WATCH_SESSION_ONLY only a task that leads its session is stopped: the
 * policy then counts no other exec as a tool call, so the rest (`agentd tool` itself,
 * the agent's own housekeeping) is reported without waiting for user space.
 *
 * Dead-man switch: a hung daemon must never hang an agent. The daemon's event loop
 * writes `heartbeat` every ~200 ms; when the beat is older than its max_age_ns the
 * program does not stop the task (AGENTD_PF_STOP_SKIPPED: the daemon places it late,
 * best effort, if it comes back). Every stopped task is recorded in `held` first, so the
 * exec watchdog (a separate process) resumes it if the daemon stalls right after.
 *
 * Two attach flavours share the logic: tp_btf (typed args, 5.5+) and classic
 * tracepoints (needs tracefs); the loader enables one of them.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "agentd.h"

#define SIGSTOP 19

char LICENSE[] SEC("license") = "GPL";

const volatile struct agentd_lifecycle_config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} watched_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 512 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AGENTD_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agentd_heartbeat);
} heartbeat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTD_HELD_MAX);
	__type(key, __u32);
	__type(value, struct agentd_held);
} held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTD_SHELLS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} shells SEC(".maps");

static __always_inline void count(__u32 id)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &id);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void submit(struct agentd_proc_event *e)
{
	__u64 flags = 0;

	if (e->flags & AGENTD_PF_STOPPED)
		flags = BPF_RB_FORCE_WAKEUP;	/* a task waits for user space */
	else if (cfg.batch_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.batch_bytes ?
			BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

/* The watched cgroup covering `cgid` (the current task's cgroup, or the forked child's,
 * which shares the current task's ancestors); 0 if none. `cont` (may be 0) gets
 * AGENTD_WATCH_CONTAINERS, plus that ancestor's STOP_EXEC, when a strict ancestor is an
 * agent's container parent: `cgid` is then a container's cgroup. */
static __always_inline __u64 find_watched_in(__u64 cgid, __u32 *flags, __u32 *cont)
{
	__u32 *f = bpf_map_lookup_elem(&watched_cgroups, &cgid);
	__u64 wid = 0;
	__u32 out = 0, c = 0;

	if (f && !cont) {
		*flags = *f;
		return cgid;
	}
	if (f) {
		wid = cgid;
		out = *f;
	}
	for (int lvl = 1; lvl < AGENTD_MAX_CGROUP_DEPTH; lvl++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(lvl);

		if (!id || id == cgid)
			break;
		f = bpf_map_lookup_elem(&watched_cgroups, &id);
		if (!f)
			continue;
		if (!wid && (*f & AGENTD_WATCH_TREE)) {
			/* MAIN/STOP apply to the exact cgroup only, never to descendants. */
			wid = id;
			out = *f & AGENTD_WATCH_TREE;
			if (!cont)
				break;
		}
		if (*f & AGENTD_WATCH_CONTAINERS)
			c = AGENTD_WATCH_CONTAINERS | (*f & AGENTD_WATCH_STOP_EXEC);
	}
	*flags = out;
	if (cont)
		*cont = c;
	return wid;
}

static __always_inline __u64 find_watched(__u64 cgid, __u32 *flags)
{
	return find_watched_in(cgid, flags, 0);
}

/* Is `parent` a persistent shell user space registered? The same task, not a reused pid:
 * its start time in USER_HZ ticks, as /proc/PID/stat gives it (field 22). */
static __always_inline int is_shell(struct task_struct *parent)
{
	__u32 tgid = BPF_CORE_READ(parent, tgid);
	__u64 *start = bpf_map_lookup_elem(&shells, &tgid);

	return start && *start == BPF_CORE_READ(parent, group_leader, start_boottime) / AGENTD_NS_PER_TICK;
}

/* Is the daemon's event loop alive (a recent heartbeat)? No bound set: yes. */
static __always_inline int daemon_alive(void)
{
	__u32 key = 0;
	struct agentd_heartbeat *hb = bpf_map_lookup_elem(&heartbeat, &key);

	if (!hb)
		return 0;
	__u64 max_age = hb->max_age_ns;

	if (!max_age)
		return 1;
	__u64 beat = hb->beat_ns;
	__u64 now = bpf_ktime_get_ns();

	return now <= beat || now - beat <= max_age;
}

/* Stop the current task for placement; 1 if it was. It is recorded in `held` before
 * the signal so that the watchdog can always release it; no record, no stop. */
static __always_inline int stop_for_placement(struct task_struct *t, __u32 pid)
{
	struct agentd_held h = {
		.stop_ns = bpf_ktime_get_ns(),
		.start_boottime_ns = BPF_CORE_READ(t, start_boottime),
	};

	if (bpf_map_update_elem(&held, &pid, &h, BPF_ANY)) {
		count(AGENTD_STAT_HELD_FULL);
		return 0;
	}
	if (bpf_send_signal(SIGSTOP)) {
		bpf_map_delete_elem(&held, &pid);
		return 0;
	}
	return 1;
}

static __always_inline struct agentd_proc_event *
reserve(__u32 type, struct task_struct *t, __u64 cgid, __u64 wid)
{
	struct agentd_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AGENTD_STAT_LOST);
		return 0;
	}
	e->type = type;
	e->flags = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cgid;
	e->watched_id = wid;
	e->pid = BPF_CORE_READ(t, tgid);
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->sid = 0;
	e->pgid = 0;
	e->exit_code = 0;
	e->argv_len = 0;
	e->filename[0] = 0;
	e->argv[0] = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
	return e;
}

static __always_inline int handle_fork(struct task_struct *parent, struct task_struct *child)
{
	/* Threads are clones too; only new processes matter. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	/* The child's own cgroup: it differs from ours with clone3(CLONE_INTO_CGROUP). */
	__u64 cgid = task_cgroup_id(child);
	__u32 flags;
	__u64 wid = find_watched(cgid, &flags);

	if (!wid && !cfg.report_all)
		return 0;
	struct agentd_proc_event *e = reserve(AGENTD_EV_FORK, child, cgid, wid);

	if (!e)
		return 0;
	e->ppid = BPF_CORE_READ(parent, tgid);
	if (flags & AGENTD_WATCH_MAIN)
		e->flags |= AGENTD_PF_MAIN;
	submit(e);
	return 0;
}

/* Stop the current task for placement unless the daemon is gone; flags say which. */
static __always_inline void hold_for_placement(struct task_struct *t, struct agentd_proc_event *e)
{
	if (!daemon_alive()) {
		e->flags |= AGENTD_PF_STOP_SKIPPED;
		count(AGENTD_STAT_STOP_SKIPPED);
	} else if (stop_for_placement(t, e->pid)) {
		e->flags |= AGENTD_PF_STOPPED;
		count(AGENTD_STAT_STOPPED);
	}
}

static __always_inline int handle_exec(struct task_struct *t, const char *filename)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	__u32 flags, cont;
	__u64 wid = find_watched_in(cgid, &flags, &cont);

	if (!wid && !cfg.report_all)
		return 0;
	struct agentd_proc_event *e = reserve(AGENTD_EV_EXEC, t, cgid, wid);

	if (!e)
		return 0;
	if (filename)
		bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	struct mm_struct *mm = BPF_CORE_READ(t, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	__u32 len = end > start ? end - start : 0;

	if (len > AGENTD_ARGV_LEN - 1)
		len = AGENTD_ARGV_LEN - 1;
	if (len && bpf_probe_read_user(e->argv, len, (void *)start) == 0)
		e->argv_len = len;
	e->argv[AGENTD_ARGV_LEN - 1] = 0;
	struct signal_struct *sig = BPF_CORE_READ(t, signal);

	e->sid = BPF_CORE_READ(sig, pids[AGENTD_PIDTYPE_SID], numbers[0].nr);
	e->pgid = BPF_CORE_READ(sig, pids[AGENTD_PIDTYPE_PGID], numbers[0].nr);
	struct task_struct *parent = BPF_CORE_READ(t, real_parent);

	if (flags & AGENTD_WATCH_MAIN) {
		e->flags |= AGENTD_PF_MAIN;
		if (task_cgroup_id(parent) == cgid) {
			e->flags |= AGENTD_PF_PARENT_MAIN;
			if (is_shell(parent))
				e->flags |= AGENTD_PF_SHELL_CHILD;	/* its shell would see a stop */
			else if ((flags & AGENTD_WATCH_STOP_EXEC) &&
				 (!(flags & AGENTD_WATCH_SESSION_ONLY) || e->sid == BPF_CORE_READ(t, tgid)))
				hold_for_placement(t, e);
			/* else the sweep strategy: report only */
		}
	} else if ((cont & AGENTD_WATCH_CONTAINERS) && task_cgroup_id(parent) != cgid) {
		/* Entered a container's cgroup from outside: the runtime (runc/crun exec, conmon)
		 * started it. Container inits come here too; user space lets those be. */
		e->flags |= AGENTD_PF_CONTAINER;
		if (cont & AGENTD_WATCH_STOP_EXEC)
			hold_for_placement(t, e);
	}
	submit(e);
	return 0;
}

static __always_inline int handle_exit(struct task_struct *t)
{
	/* One event per process: when its thread-group leader exits. */
	if (BPF_CORE_READ(t, pid) != BPF_CORE_READ(t, tgid))
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	__u32 flags;
	__u64 wid = find_watched(cgid, &flags);

	if (!wid && !cfg.report_all)
		return 0;
	struct agentd_proc_event *e = reserve(AGENTD_EV_EXIT, t, cgid, wid);

	if (!e)
		return 0;
	e->exit_code = BPF_CORE_READ(t, exit_code);
	if (flags & AGENTD_WATCH_MAIN) {
		/* A task killed while stopped leaves no `held` entry behind. */
		__u32 pid = e->pid;

		bpf_map_delete_elem(&held, &pid);
	}
	if (flags & AGENTD_WATCH_MAIN)
		e->flags |= AGENTD_PF_MAIN;
	submit(e);
	return 0;
}

/* ---- tp_btf flavour ---------------------------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(agentd_fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return handle_fork(parent, child);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(agentd_exec_btf, struct task_struct *t, pid_t old_pid, struct linux_binprm *bprm)
{
	return handle_exec(t, BPF_CORE_READ(bprm, filename));
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(agentd_exit_btf, struct task_struct *t)
{
	return handle_exit(t);
}

/* ---- classic tracepoint flavour ---------------------------------------------- */

SEC("tracepoint/sched/sched_process_fork")
int agentd_fork_tp(struct trace_event_raw_sched_process_fork *ctx)
{
	/* No task pointer for the child here: it shares the parent's cgroup (unless
	 * clone3(CLONE_INTO_CGROUP)), and thread clones cannot be told apart. */
	struct task_struct *parent = (void *)bpf_get_current_task();
	__u64 cgid = bpf_get_current_cgroup_id();
	__u32 flags;
	__u64 wid = find_watched(cgid, &flags);

	if (!wid && !cfg.report_all)
		return 0;
	struct agentd_proc_event *e = reserve(AGENTD_EV_FORK, parent, cgid, wid);

	if (!e)
		return 0;
	e->pid = BPF_CORE_READ(ctx, child_pid);
	e->ppid = BPF_CORE_READ(parent, tgid);
	if (flags & AGENTD_WATCH_MAIN)
		e->flags |= AGENTD_PF_MAIN;
	submit(e);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int agentd_exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 loc = BPF_CORE_READ(ctx, __data_loc_filename);

	return handle_exec((void *)bpf_get_current_task(), (const char *)ctx + (loc & 0xffff));
}

SEC("tracepoint/sched/sched_process_exit")
int agentd_exit_tp(void *ctx)
{
	return handle_exit((void *)bpf_get_current_task());
}
