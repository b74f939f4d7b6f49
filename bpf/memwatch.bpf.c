// SPDX-License-Identifier: GPL-2.0
/*
 * Memory growth of tool-call cgroups, tracked in the kernel.
 *
 * agentd's host hierarchy may have no memory controller (hybrid v1/v2 hosts), so usage
 * is not read from memory.current: it is the sum of the resident set (file + anon +
 * shmem pages) of the processes in the cgroup, kept current from the rss_stat
 * tracepoint, which fires whenever a process's rss counters change (page faults, unmap,
 * exit). Each mm is attributed to the cgroup of the task that last faulted on it
 * (`mm_state`); when a process moves between tracked cgroups, its rss moves with it at
 * its next fault (one that moves to an untracked cgroup keeps its charge until it exits).
 * Shared file pages are counted once per process (rss semantics, not memcg's), except
 * what a fork child inherits before it execs: that copy is its parent's (see below).
 *
 * Only cgroups with an entry in `mem_limits` are tracked. An event goes to `mem_events`
 * when usage crosses threshold_bytes (edge-triggered, re-armed when it falls below) or
 * when growth within the current window exceeds rate_bytes_per_s * window (reported as
 * soon as it is exceeded, not at the window's end; at most one per window). Growth is
 * what the processes allocate: rss arriving with a process (moved in, or a fork child's
 * copy of its parent's mm) counts toward usage but not toward the rate.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "agentd.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct agentd_memwatch_config cfg = {
	.window_ns = 250000000ULL,
	.page_shift = 12,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct agentd_mem_limit);
} mem_limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct agentd_mem_state);
} mem_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct agentd_mm_state);
} mm_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} mem_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AGENTD_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 id)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &id);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __s64 mm_rss_bytes(struct mm_struct *mm)
{
	/* percpu_counter.count is the folded value, behind by at most the per-CPU batch;
	 * the same approximation the rss_stat tracepoint itself reports. `mm` is a
	 * BTF-typed argument: direct loads, no probe-read helper calls. */
	__s64 pages = mm->rss_stat[AGENTD_MM_FILEPAGES].count +
		      mm->rss_stat[AGENTD_MM_ANONPAGES].count +
		      mm->rss_stat[AGENTD_MM_SHMEMPAGES].count;

	return pages > 0 ? pages << cfg.page_shift : 0;
}

static __always_inline struct agentd_mem_state *state_of(__u64 cgid, __u64 now)
{
	struct agentd_mem_state *st = bpf_map_lookup_elem(&mem_state, &cgid);

	if (st)
		return st;
	struct agentd_mem_state init = { .win_start_ns = now };

	bpf_map_update_elem(&mem_state, &cgid, &init, BPF_NOEXIST);
	return bpf_map_lookup_elem(&mem_state, &cgid);
}

static __always_inline void check(__u64 cgid, struct agentd_mem_limit *lim,
				  struct agentd_mem_state *st, __s64 total, __u64 now)
{
	__u32 reason = 0;
	__s64 growth = total - st->win_start_bytes;
	__u64 elapsed = now - st->win_start_ns;

	if (lim->threshold_bytes) {
		if (total >= (__s64)lim->threshold_bytes) {
			if (__sync_val_compare_and_swap(&st->over_threshold, 0, 1) == 0)
				reason |= AGENTD_MEM_OVER_THRESHOLD;
		} else if (st->over_threshold) {
			st->over_threshold = 0;
		}
	}
	if (lim->rate_bytes_per_s && growth > 0) {
		/* rate * window in ms / 1000: no overflow below ~1 PB/s. */
		__u64 budget = lim->rate_bytes_per_s * (cfg.window_ns / 1000000) / 1000;

		if ((__u64)growth >= budget && now - st->last_rate_event_ns >= cfg.window_ns) {
			st->last_rate_event_ns = now;
			reason |= AGENTD_MEM_OVER_RATE;
		}
	}
	if (reason) {
		struct agentd_mem_event *e = bpf_ringbuf_reserve(&mem_events, sizeof(*e), 0);

		if (!e) {
			count(AGENTD_STAT_LOST);
		} else {
			e->type = AGENTD_EV_MEM;
			e->reason = reason;
			e->ts_ns = now;
			e->cgroup_id = cgid;
			e->rss_bytes = total > 0 ? total : 0;
			e->threshold_bytes = lim->threshold_bytes;
			e->rate_bytes_per_s = lim->rate_bytes_per_s;
			e->growth_bytes = growth;
			e->window_ns = elapsed;
			e->pid = bpf_get_current_pid_tgid() >> 32;
			e->_pad = 0;
			bpf_ringbuf_submit(e, 0);
			count(AGENTD_STAT_MEM_EVENTS);
		}
	}
	if (elapsed >= cfg.window_ns) {
		st->win_start_ns = now;
		st->win_start_bytes = total;
	}
}

static __always_inline int handle_rss(struct mm_struct *mm, struct mm_struct *cur_mm)
{
	__u64 key = (__u64)mm;
	struct agentd_mm_state *ms;
	struct agentd_mem_limit *lim;
	struct agentd_mem_state *st;
	__u64 cgid;

	if (mm == cur_mm) {
		/* Fast path, taken for every page fault on the host: one hash lookup.
		 * A process that moved from a tracked to an untracked cgroup therefore keeps
		 * its charge in the old one until its mm is torn down (below). */
		cgid = bpf_get_current_cgroup_id();
		lim = bpf_map_lookup_elem(&mem_limits, &cgid);
		if (!lim)
			return 0;
		ms = bpf_map_lookup_elem(&mm_state, &key);
	} else {
		/* Not the current task's mm: fork copying into a child, exit teardown (the
		 * task's mm pointer is already cleared), reclaim. Charge whoever owns it. */
		ms = bpf_map_lookup_elem(&mm_state, &key);
		if (!ms)
			return 0;
		cgid = ms->cgroup_id;
		lim = bpf_map_lookup_elem(&mem_limits, &cgid);
		if (!lim) {
			bpf_map_delete_elem(&mm_state, &key);
			return 0;
		}
	}
	/* rss that enters or leaves a cgroup with a process (a fork child's copied mm, a
	 * move) changes usage but is not growth: it shifts the rate window's baseline too. */
	__s64 arrived = 0;

	if (ms && ms->cgroup_id != cgid) {
		/* The process moved between tracked cgroups: take its rss out of the old one. */
		st = bpf_map_lookup_elem(&mem_state, &ms->cgroup_id);
		if (st) {
			__sync_fetch_and_add(&st->rss_bytes, -ms->rss_bytes);
			__sync_fetch_and_add(&st->win_start_bytes, -ms->rss_bytes);
		}
		ms->cgroup_id = cgid;
		ms->rss_bytes = 0;
		arrived = 1;
	}
	__s64 rss = mm_rss_bytes(mm);
	__s64 charge, delta;

	if (ms) {
		__s64 base = ms->base_bytes;

		/* A fork child that gives inherited pages back (munmap, exec tearing the
		 * copy down) lowers its base with them: what it maps afterwards is its own. */
		if (rss < base) {
			ms->base_bytes = rss;
			base = rss;
		}
		charge = rss - base;
		/* Most events change only a per-CPU delta, not the folded count: nothing to do. */
		if (charge == ms->rss_bytes)
			return 0;
		/* One atomic exchange: a fault on one CPU and reclaim of the same mm on another
		 * would otherwise both take the old value and both add the change, and the
		 * cgroup's total would overshoot until a later event corrects it (a threshold
		 * crossed twice for one rise). */
		delta = charge - (__s64)__sync_lock_test_and_set(&ms->rss_bytes, charge);
		if (!delta)
			return 0;
	} else {
		/* A fork child that has not exec'd (PF_FORKNOEXEC on its thread-group leader)
		 * holds a copy of its parent's mm: pages shared copy-on-write with the parent,
		 * which memcg leaves charged where they were faulted. They are not this cgroup's
		 * usage, only what the child adds on top of them is. Counted whole, a large
		 * process forking into a tracked cgroup (a 500 MiB node forking a shell inside
		 * a tool call) showed its rss as the call's own until the child exec'd: a
		 * threshold crossed by nothing the call allocated. */
		__s64 base = 0;
		struct task_struct *leader = bpf_get_current_task_btf()->group_leader;

		if (leader && (leader->flags & AGENTD_PF_FORKNOEXEC))
			base = rss;
		struct agentd_mm_state init = { .cgroup_id = cgid, .rss_bytes = rss - base, .base_bytes = base };

		charge = rss - base;
		delta = charge;
		arrived = 1;
		bpf_map_update_elem(&mm_state, &key, &init, BPF_ANY);
	}
	if (rss == 0)
		bpf_map_delete_elem(&mm_state, &key);
	__u64 now = bpf_ktime_get_ns();

	st = state_of(cgid, now);
	if (!st)
		return 0;
	__s64 total = __sync_fetch_and_add(&st->rss_bytes, delta) + delta;

	if (arrived)
		__sync_fetch_and_add(&st->win_start_bytes, delta);

	check(cgid, lim, st, total, now);
	return 0;
}

SEC("tp_btf/rss_stat")
int BPF_PROG(agentd_rss_btf, struct mm_struct *mm, int member)
{
	/* BTF-typed current task: a direct load, no probe read, on this hot path (5.11+). */
	struct task_struct *cur = bpf_get_current_task_btf();

	return handle_rss(mm, cur->mm);
}
