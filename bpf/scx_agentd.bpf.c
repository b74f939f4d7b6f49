// SPDX-License-Identifier: GPL-2.0
/*
 * agentd's sched_ext scheduler: weighted fairness across agents, then across the
 * cgroups (main process, tool calls) of each agent, and low wake-up latency for
 * interactive work.
 *
 * Scope: SCX_OPS_SWITCH_PARTIAL. Only tasks the daemon moved to the SCHED_EXT policy
 * (agent processes and their tool calls; children inherit the policy) are scheduled
 * here; the host's own services stay on the kernel's fair class, which always runs
 * before this one.
 *
 * Queues: one DSQ per agent slot, ordered by the virtual time of the cgroup each task
 * belongs to; one FIFO DSQ for interactive tasks, consulted first. A CPU that needs
 * work takes the interactive queue, else the queued agent with the lowest agent
 * virtual time. Virtual time advances by CPU time * 100 / weight, so over any busy
 * period agents receive CPU in proportion to their weights. Credit is capped across
 * sleeps (wake_lag_ns), so an idle agent cannot bank time and then monopolise CPUs.
 *
 * Interactive: a waking interactive task goes straight to the local queue of its CPU
 * (preferably the CPU handling the wake-up) and preempts the non-interactive work running
 * there at once, instead of at the next tick as a fair-class wake-up does under lazy
 * preemption. The decision is taken in ops.enqueue, not in ops.select_cpu alone: the
 * kernel skips select_cpu for a task allowed on one CPU only (a pinned tool, a one-CPU
 * machine or cpuset), and such a wake-up must preempt too. When its CPU already runs
 * interactive work or is held by a higher scheduling class (the host's fair-class tasks
 * and kernel threads always run before SCHED_EXT ones), the task waits in the interactive
 * DSQ, which every CPU consults first, and a CPU running other work is kicked to take it.
 * A CPU that a higher class takes over hands back the tasks queued on it (ops.cpu_release),
 * so an interactive task does not wait behind a kernel thread while another CPU runs batch
 * work. A task that runs several slices without sleeping is demoted to its agent's queue
 * until it sleeps again, so CPU-bound "interactive" work cannot starve the rest.
 *
 * Kernel types: the host that builds agentd may lack sched_ext in its BTF, so the few
 * kernel types used below are declared here with CO-RE relocations (field names only
 * matter; libbpf matches struct_ops members by name against the running kernel).
 * Checked against 7.3 (Debian trixie-backports); the kfuncs used exist since 6.13.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "scx_agentd.h"

typedef __u8 u8;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef _Bool bool;
#define true 1
#define false 0

char LICENSE[] SEC("license") = "GPL";

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
struct kernfs_node {
	u64 id;
};
struct cgroup {
	struct kernfs_node *kn;
};
struct css_set {
	struct cgroup *dfl_cgrp;
};
struct cpumask {
	unsigned long bits[1];
};
struct sched_ext_entity {
	u32 flags;
	u64 slice;
	u64 dsq_vtime;
};
struct task_struct {
	struct sched_ext_entity scx;
	const struct cpumask *cpus_ptr;
	struct css_set *cgroups;
};
enum scx_exit_kind {
	SCX_EXIT_NONE = 0,
};
struct scx_exit_info {
	enum scx_exit_kind kind;
	s64 exit_code;
	const char *reason;
	char *msg;
};
#pragma clang attribute pop

struct scx_cpu_acquire_args;
struct scx_cpu_release_args;

/* The members agentd sets; libbpf fills the rest of the kernel's struct with zeroes. */
struct sched_ext_ops {
	s32 (*select_cpu)(struct task_struct *p, s32 prev_cpu, u64 wake_flags);
	void (*enqueue)(struct task_struct *p, u64 enq_flags);
	void (*dispatch)(s32 cpu, struct task_struct *prev);
	void (*runnable)(struct task_struct *p, u64 enq_flags);
	void (*running)(struct task_struct *p);
	void (*stopping)(struct task_struct *p, bool runnable);
	void (*quiescent)(struct task_struct *p, u64 deq_flags);
	void (*cpu_acquire)(s32 cpu, struct scx_cpu_acquire_args *args);
	void (*cpu_release)(s32 cpu, struct scx_cpu_release_args *args);
	s32 (*init)(void);
	void (*exit)(struct scx_exit_info *info);
	u64 flags;
	u32 timeout_ms;
	char name[128];
};

/* Constants of include/linux/sched/ext.h and kernel/sched/ext_internal.h, unchanged since 6.12. */
#define SCX_DSQ_LOCAL		0x8000000000000002ULL
#define SCX_ENQ_WAKEUP		0x1ULL
#define SCX_ENQ_PREEMPT		(1ULL << 32)
#define SCX_ENQ_REENQ		(1ULL << 40)
#define SCX_KICK_IDLE		1
#define SCX_KICK_PREEMPT	2
#define SCX_OPS_SWITCH_PARTIAL	8
#define SCX_TASK_QUEUED		1	/* sched_ext_entity.flags: still runnable */
#define SCX_WATCHDOG_MS		10000	/* a task queued this long ejects the scheduler */

/* kfuncs (bpftool 7.x emits no prototypes for them). */
extern s32 scx_bpf_create_dsq(u64 dsq_id, s32 node) __ksym;
extern s32 scx_bpf_select_cpu_dfl(struct task_struct *p, s32 prev_cpu, u64 wake_flags, bool *is_idle) __ksym;
extern void scx_bpf_dsq_insert(struct task_struct *p, u64 dsq_id, u64 slice, u64 enq_flags) __ksym;
extern void scx_bpf_dsq_insert_vtime(struct task_struct *p, u64 dsq_id, u64 slice, u64 vtime,
				     u64 enq_flags) __ksym;
extern bool scx_bpf_dsq_move_to_local(u64 dsq_id) __ksym;
extern s32 scx_bpf_dsq_nr_queued(u64 dsq_id) __ksym;
extern void scx_bpf_kick_cpu(s32 cpu, u64 flags) __ksym;
extern s32 scx_bpf_task_cpu(const struct task_struct *p) __ksym;
extern bool bpf_cpumask_test_cpu(u32 cpu, const struct cpumask *cpumask) __ksym;
extern u32 scx_bpf_reenqueue_local(void) __ksym;

#define MAX_AGENTS SCX_AGENTD_MAX_AGENTS
#define MAX_CPUS SCX_AGENTD_MAX_CPUS
#define INTERACTIVE_BURST_SLICES 20	/* CPU time per wake-up before demotion, in slices */
/* cpu_lat[]: what a CPU runs. Latency class + 1 while one of agentd's tasks runs there;
 * NONE (the .bss default) when idle or between tasks; OTHER while a higher scheduling
 * class (fair, rt, dl) holds it, from ops.cpu_release until ops.cpu_acquire. */
#define CPU_LAT_NONE 0
#define CPU_LAT_INTERACTIVE (SCX_AGENTD_LAT_INTERACTIVE + 1)
#define CPU_LAT_OTHER 0xff

const volatile struct scx_agentd_config cfg = {
	.slice_ns = { 1000000ULL, 5000000ULL, 20000000ULL },
	.wake_lag_ns = 20000000ULL,
	.nr_cpus = 1,
	.preempt = 1,
};

u64 agent_vtime[MAX_AGENTS];		/* weighted CPU time per agent slot */
u64 agent_queue_vtime[MAX_AGENTS];	/* highest cgroup vtime started in each agent's DSQ */
s32 agent_runnable[MAX_AGENTS];		/* runnable tasks per slot */
u64 global_vtime;			/* agent vtime of the latest dispatch: "now" */
u32 max_slot;				/* highest slot seen, bounds the dispatch scan */
u8 cpu_lat[MAX_CPUS];			/* what each CPU runs, see CPU_LAT_* */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SCX_AGENTD_MAX_CGROUPS);
	__type(key, u64);
	__type(value, struct scx_agentd_cgroup);
} cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_AGENTS);
	__type(key, u32);
	__type(value, struct scx_agentd_agent);
} agents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SCX_AGENTD_NR_STATS);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct scx_agentd_exit);
} exit_info SEC(".maps");

/* What the scheduler remembers per task between callbacks. */
struct task_ctx {
	u64 cgid;		/* cgroup whose entry classified it (0: none) */
	u64 run_start;		/* when it last started running */
	u32 slot;
	u32 lat;
	u8 counted;		/* counted in agent_runnable[slot] */
	u8 demoted;		/* interactive task that ran too long since it woke */
	u64 burst_ns;		/* CPU time since it last became runnable */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

static __always_inline void stat_inc(u32 idx)
{
	u64 *cnt = bpf_map_lookup_elem(&stats, &idx);

	if (cnt)
		__sync_fetch_and_add(cnt, 1);
}

static __always_inline struct task_ctx *ctx_of(struct task_struct *p, bool create)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline u32 weight_or_dfl(u32 w)
{
	return w ? w : SCX_AGENTD_WEIGHT_DFL;
}

static __always_inline u32 eff_lat(struct task_ctx *tctx)
{
	if (tctx->lat == SCX_AGENTD_LAT_INTERACTIVE && tctx->demoted)
		return SCX_AGENTD_LAT_NORMAL;
	return tctx->lat < SCX_AGENTD_NR_LAT ? tctx->lat : SCX_AGENTD_LAT_NORMAL;
}

static __always_inline u64 slice_of(u32 lat)
{
	return cfg.slice_ns[lat < SCX_AGENTD_NR_LAT ? lat : SCX_AGENTD_LAT_NORMAL];
}

/* Find the task's entry by its own v2 cgroup; tasks elsewhere go to slot 0. */
static __always_inline void classify(struct task_struct *p, struct task_ctx *tctx)
{
	u64 id = p->cgroups->dfl_cgrp->kn->id;
	struct scx_agentd_cgroup *cg = bpf_map_lookup_elem(&cgroups, &id);

	if (cg && cg->slot > 0 && cg->slot < MAX_AGENTS) {
		tctx->cgid = id;
		tctx->slot = cg->slot;
		tctx->lat = cg->latency < SCX_AGENTD_NR_LAT ? cg->latency : SCX_AGENTD_LAT_NORMAL;
	} else {
		tctx->cgid = 0;
		tctx->slot = 0;
		tctx->lat = SCX_AGENTD_LAT_NORMAL;
		stat_inc(SCX_AGENTD_STAT_UNKNOWN);
	}
	if (tctx->slot > max_slot)
		max_slot = tctx->slot;
}

/* A CPU an interactive wake-up may take at once: it runs agentd's non-interactive work
 * or nothing, not another interactive task and not a higher class's task (which
 * SCX_ENQ_PREEMPT could not displace). */
static __always_inline bool preemptible(s32 cpu)
{
	u8 l;

	if (cpu < 0 || cpu >= MAX_CPUS)
		return false;
	l = cpu_lat[cpu];
	return l != CPU_LAT_INTERACTIVE && l != CPU_LAT_OTHER;
}

/* Make some CPU that runs non-interactive work take the interactive queue now. */
static __always_inline void kick_for_interactive(struct task_struct *p)
{
	s32 own = scx_bpf_task_cpu(p);

	for (u32 i = 0; i < MAX_CPUS && i < cfg.nr_cpus; i++) {
		if (preemptible(i) && bpf_cpumask_test_cpu(i, p->cpus_ptr)) {
			scx_bpf_kick_cpu(i, SCX_KICK_PREEMPT);
			return;
		}
	}
	/* Every CPU is busy with interactive or higher-class work: the first one to finish
	 * takes it from the interactive queue. Wake its own CPU in case that one idles. */
	scx_bpf_kick_cpu(own, SCX_KICK_IDLE);
}

SEC("struct_ops/agentd_select_cpu")
s32 BPF_PROG(agentd_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *tctx = ctx_of(p, false);
	bool is_idle = false;
	u32 lat = SCX_AGENTD_LAT_NORMAL;
	s32 cpu, local;

	if (tctx) {
		/* select_cpu runs only for wake-ups: a task that slept is not CPU-bound. */
		tctx->burst_ns = 0;
		tctx->demoted = 0;
		lat = eff_lat(tctx);
	}

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (is_idle) {
		/* An idle CPU would otherwise stay idle: no fairness is lost. */
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_of(lat), 0);
		stat_inc(SCX_AGENTD_STAT_DIRECT);
		return cpu;
	}
	if (!tctx || lat != SCX_AGENTD_LAT_INTERACTIVE || !cfg.preempt)
		return cpu;
	/* The CPU to preempt (ops.enqueue does it, on the CPU returned here): the one
	 * handling this wake-up (no IPI: the switch happens on return from the interrupt),
	 * else the default choice, else any allowed CPU that runs neither interactive work
	 * nor a higher class's task. */
	local = bpf_get_smp_processor_id();
	if (preemptible(local) && bpf_cpumask_test_cpu(local, p->cpus_ptr))
		return local;
	if (preemptible(cpu))
		return cpu;
	for (u32 i = 0; i < MAX_CPUS && i < cfg.nr_cpus; i++) {
		if (preemptible(i) && bpf_cpumask_test_cpu(i, p->cpus_ptr))
			return i;
	}
	return cpu;
}

SEC("struct_ops/agentd_runnable")
void BPF_PROG(agentd_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = ctx_of(p, true);
	u32 slot;

	if (!tctx)
		return;
	classify(p, tctx);
	slot = tctx->slot & (MAX_AGENTS - 1);
	tctx->counted = 1;
	tctx->burst_ns = 0;
	tctx->demoted = 0;
	if (__sync_fetch_and_add(&agent_runnable[slot], 1) == 0) {
		/* The agent wakes up: it keeps at most wake_lag_ns of unused credit. */
		u64 now = global_vtime;

		if (now > cfg.wake_lag_ns && agent_vtime[slot] < now - cfg.wake_lag_ns)
			agent_vtime[slot] = now - cfg.wake_lag_ns;
	}
}

SEC("struct_ops/agentd_quiescent")
void BPF_PROG(agentd_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *tctx = ctx_of(p, false);

	if (!tctx || !tctx->counted)
		return;
	tctx->counted = 0;
	__sync_fetch_and_sub(&agent_runnable[tctx->slot & (MAX_AGENTS - 1)], 1);
}

SEC("struct_ops/agentd_enqueue")
void BPF_PROG(agentd_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = ctx_of(p, true);
	struct scx_agentd_cgroup *cg = NULL;
	u32 slot, lat;
	u64 vt, floor;

	stat_inc(SCX_AGENTD_STAT_ENQUEUE);
	if (tctx && (enq_flags & SCX_ENQ_WAKEUP)) {
		tctx->burst_ns = 0;		/* it slept: interactive again */
		tctx->demoted = 0;
	}
	if (!tctx) {
		scx_bpf_dsq_insert_vtime(p, SCX_AGENTD_DSQ_AGENT_BASE, slice_of(SCX_AGENTD_LAT_NORMAL),
					 p->scx.dsq_vtime, enq_flags);
		return;
	}
	lat = eff_lat(tctx);
	slot = tctx->slot & (MAX_AGENTS - 1);
	if (lat == SCX_AGENTD_LAT_INTERACTIVE) {
		/* task_cpu(p) is the CPU select_cpu chose, or its only allowed CPU. A wake-up
		 * (or a task handed back by a CPU a higher class took) preempts the work
		 * running there when that is preemptible; SCX_ENQ_PREEMPT ends the current
		 * slice and reschedules that CPU, with an IPI when it is not this one. */
		s32 cpu = scx_bpf_task_cpu(p);

		if (cfg.preempt && (enq_flags & (SCX_ENQ_WAKEUP | SCX_ENQ_REENQ)) && preemptible(cpu) &&
		    bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			stat_inc(SCX_AGENTD_STAT_PREEMPT);
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_of(lat), enq_flags | SCX_ENQ_PREEMPT);
			return;
		}
		scx_bpf_dsq_insert(p, SCX_AGENTD_DSQ_INTERACTIVE, slice_of(lat), enq_flags);
		kick_for_interactive(p);
		stat_inc(SCX_AGENTD_STAT_INTERACTIVE);
		return;
	}
	/* Read the task's own vtime first and unconditionally: a select between a task and
	 * a map-value pointer compiles to one load the verifier refuses. */
	vt = p->scx.dsq_vtime;
	if (tctx->cgid)
		cg = bpf_map_lookup_elem(&cgroups, &tctx->cgid);
	if (cg)
		vt = cg->vtime;
	/* Same cap on banked credit for the cgroups inside an agent. */
	floor = agent_queue_vtime[slot];
	floor = floor > cfg.wake_lag_ns ? floor - cfg.wake_lag_ns : 0;
	if (vt < floor) {
		vt = floor;
		if (cg)
			cg->vtime = vt;
	}
	scx_bpf_dsq_insert_vtime(p, SCX_AGENTD_DSQ_AGENT_BASE + slot, slice_of(lat), vt, enq_flags);
}

struct pick {
	u64 best_vt;
	s32 best;
};

/* bpf_loop callback: verified once, where an unrolled scan of 64 queues that keeps the
 * best one so far explodes the verifier's state space. */
static long pick_agent(u64 i, void *data)
{
	struct pick *pk = data;
	u64 vt;

	if (i > max_slot)
		return 1;
	if (scx_bpf_dsq_nr_queued(SCX_AGENTD_DSQ_AGENT_BASE + i) <= 0)
		return 0;
	vt = agent_vtime[i & (MAX_AGENTS - 1)];
	if (vt < pk->best_vt) {
		pk->best_vt = vt;
		pk->best = i;
	}
	return 0;
}

SEC("struct_ops/agentd_dispatch")
void BPF_PROG(agentd_dispatch, s32 cpu, struct task_struct *prev)
{
	struct pick pk;

	if (scx_bpf_dsq_move_to_local(SCX_AGENTD_DSQ_INTERACTIVE))
		return;
	/* An interactive task whose slice ran out keeps its CPU ahead of agent work:
	 * dispatching nothing lets the kernel run a still-runnable @prev again. Were it
	 * re-queued instead, this CPU would already have taken batch work for a whole
	 * slice before @prev reached the interactive queue. */
	if (prev && (prev->scx.flags & SCX_TASK_QUEUED)) {
		struct task_ctx *pc = ctx_of(prev, false);

		if (pc && eff_lat(pc) == SCX_AGENTD_LAT_INTERACTIVE)
			return;
	}
	/* Two passes: another CPU may empty the chosen queue between the scan and the move. */
	for (int attempt = 0; attempt < 2; attempt++) {
		pk.best_vt = ~0ULL;
		pk.best = -1;
		bpf_loop(MAX_AGENTS, pick_agent, &pk, 0);
		if (pk.best < 0)
			return;
		if (scx_bpf_dsq_move_to_local(SCX_AGENTD_DSQ_AGENT_BASE + pk.best)) {
			if (pk.best_vt > global_vtime)
				global_vtime = pk.best_vt;
			return;
		}
	}
}

SEC("struct_ops/agentd_running")
void BPF_PROG(agentd_running, struct task_struct *p)
{
	struct task_ctx *tctx = ctx_of(p, false);
	s32 cpu = scx_bpf_task_cpu(p);
	u32 slot;

	if (!tctx)
		return;
	tctx->run_start = bpf_ktime_get_ns();
	if (cpu >= 0 && cpu < MAX_CPUS)
		cpu_lat[cpu] = eff_lat(tctx) + 1;
	slot = tctx->slot & (MAX_AGENTS - 1);
	if (p->scx.dsq_vtime > agent_queue_vtime[slot])
		agent_queue_vtime[slot] = p->scx.dsq_vtime;
}

SEC("struct_ops/agentd_stopping")
void BPF_PROG(agentd_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = ctx_of(p, false);
	struct scx_agentd_agent *ag;
	struct scx_agentd_cgroup *cg = NULL;
	s32 cpu = scx_bpf_task_cpu(p);
	u32 slot, aw = SCX_AGENTD_WEIGHT_DFL, cw = SCX_AGENTD_WEIGHT_DFL;
	u64 used;

	if (cpu >= 0 && cpu < MAX_CPUS)
		cpu_lat[cpu] = CPU_LAT_NONE;
	if (!tctx || !tctx->run_start)
		return;
	used = bpf_ktime_get_ns() - tctx->run_start;
	tctx->run_start = 0;
	slot = tctx->slot & (MAX_AGENTS - 1);
	ag = bpf_map_lookup_elem(&agents, &slot);
	if (ag)
		aw = weight_or_dfl(ag->weight);
	__sync_fetch_and_add(&agent_vtime[slot], used * SCX_AGENTD_WEIGHT_DFL / aw);
	if (tctx->cgid)
		cg = bpf_map_lookup_elem(&cgroups, &tctx->cgid);
	if (cg) {
		cw = weight_or_dfl(cg->weight);
		__sync_fetch_and_add(&cg->vtime, used * SCX_AGENTD_WEIGHT_DFL / cw);
	}
	p->scx.dsq_vtime += used * SCX_AGENTD_WEIGHT_DFL / cw;
	if (!runnable) {
		/* Going to sleep: its next wake-up starts a new burst. */
		tctx->burst_ns = 0;
		tctx->demoted = 0;
		return;
	}
	tctx->burst_ns += used;
	if (tctx->lat == SCX_AGENTD_LAT_INTERACTIVE && !tctx->demoted &&
	    tctx->burst_ns > INTERACTIVE_BURST_SLICES * cfg.slice_ns[SCX_AGENTD_LAT_INTERACTIVE]) {
		/* Ran several slices without sleeping: CPU-bound, not interactive, until it
		 * sleeps again. Measured by CPU time rather than by an exhausted slice: a
		 * preemption kick also ends a slice. */
		tctx->demoted = 1;
		stat_inc(SCX_AGENTD_STAT_DEMOTED);
	}
}

/* A higher scheduling class takes this CPU: tasks queued on its local DSQ (a task it
 * preempted, an interactive wake-up placed here) would wait until that class is done.
 * Hand them back to ops.enqueue (SCX_ENQ_REENQ) so another CPU can run them. */
SEC("struct_ops/agentd_cpu_release")
void BPF_PROG(agentd_cpu_release, s32 cpu, struct scx_cpu_release_args *args)
{
	if (cpu >= 0 && cpu < MAX_CPUS)
		cpu_lat[cpu] = CPU_LAT_OTHER;
	scx_bpf_reenqueue_local();
}

SEC("struct_ops/agentd_cpu_acquire")
void BPF_PROG(agentd_cpu_acquire, s32 cpu, struct scx_cpu_acquire_args *args)
{
	if (cpu >= 0 && cpu < MAX_CPUS && cpu_lat[cpu] == CPU_LAT_OTHER)
		cpu_lat[cpu] = CPU_LAT_NONE;
}

SEC("struct_ops/agentd_init")
s32 BPF_PROG(agentd_init)
{
	s32 err;

	/* Sleepable: the loader sets BPF_F_SLEEPABLE (scx_bpf_create_dsq allocates). */
	err = scx_bpf_create_dsq(SCX_AGENTD_DSQ_INTERACTIVE, -1);
	if (err)
		return err;
	for (u32 i = 0; i < MAX_AGENTS; i++) {
		err = scx_bpf_create_dsq(SCX_AGENTD_DSQ_AGENT_BASE + i, -1);
		if (err)
			return err;
	}
	return 0;
}

SEC("struct_ops/agentd_exit")
void BPF_PROG(agentd_exit, struct scx_exit_info *info)
{
	u32 zero = 0;
	struct scx_agentd_exit *out = bpf_map_lookup_elem(&exit_info, &zero);

	if (!out)
		return;
	out->kind = info->kind;
	out->exit_code = info->exit_code;
	bpf_probe_read_kernel_str(out->reason, sizeof(out->reason), info->reason);
	bpf_probe_read_kernel_str(out->msg, sizeof(out->msg), info->msg);
}

SEC(".struct_ops")
struct sched_ext_ops agentd_ops = {
	.select_cpu = (void *)agentd_select_cpu,
	.enqueue = (void *)agentd_enqueue,
	.dispatch = (void *)agentd_dispatch,
	.runnable = (void *)agentd_runnable,
	.running = (void *)agentd_running,
	.stopping = (void *)agentd_stopping,
	.quiescent = (void *)agentd_quiescent,
	.cpu_acquire = (void *)agentd_cpu_acquire,
	.cpu_release = (void *)agentd_cpu_release,
	.init = (void *)agentd_init,
	.exit = (void *)agentd_exit,
	.flags = SCX_OPS_SWITCH_PARTIAL,
	.timeout_ms = SCX_WATCHDOG_MS,
	.name = "agentd",
};
