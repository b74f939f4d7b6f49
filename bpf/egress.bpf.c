// SPDX-License-Identifier: GPL-2.0
/*
 * Egress rates per cgroup: each packet an agent or a tool call sends gets an earliest
 * departure time (EDT) from its cgroup's rate, and the fq qdisc on the egress device
 * holds it until then.
 *
 * A cgroup_skb/egress program attached once, to agentd's root cgroup (BPF_F_ALLOW_MULTI:
 * it runs for every socket of every cgroup below, and beside any program a container
 * runtime attached). For each ancestor level of the sending socket's cgroup below the
 * attach point, the egress_limits map may hold a rate (the daemon writes one for an agent
 * and for a tool call whose policy sets `network.egress`). Every limited level keeps a
 * clock, the earliest departure of its next packet: a packet leaves at the latest clock
 * of its levels (or now), and each clock then moves on by the packet's length at its
 * rate. A clock that lags now counts as at most burst_ns behind, so an idle cgroup may
 * send a short burst at line rate, as a token bucket would. A level's clock moves on from
 * its own time (or now), not from the packet's departure: a call held back by its own
 * rate still spends its agent's budget, but does not push the agent's other traffic
 * behind its own queue (the agent's rate bounds the sum of what it and its calls send).
 *
 * Each packet is counted once, in the deepest level that has an entry (the call's, else
 * its agent's), as the nftables rules of the nft mode count it: an agent's counters are
 * the sum of its entries', never a packet twice.
 *
 * Why departure times and not drops: TCP's small-queue limit counts the bytes a qdisc
 * holds, so a socket whose packets wait in fq stops sending more, without loss or
 * retransmission (the approach of current kernels' rate limiting). Only a packet whose
 * departure lies beyond the horizon (a UDP flood, which nothing slows) is dropped, with
 * the congestion bit set so TCP reduces its window (return 2: drop + CN).
 *
 * Without fq on the device the departure time is ignored. Where the kernel has no fq
 * (CONFIG_NET_SCH_FQ off), the rates live in htb classes instead and the program only
 * picks the class: it writes the deepest limited level's classid into skb->priority,
 * which htb takes as the class when it names one of its own. The qdisc adapter
 * (agentd/kernel/qdisc.py) sets either up, and `agentd doctor` says which mode runs.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "agentd.h"

char LICENSE[] SEC("license") = "GPL";

#define NSEC_PER_SEC 1000000000ULL

const volatile struct agentd_egress_config cfg = {
	.horizon_ns = 2 * NSEC_PER_SEC,
	.first_level = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTD_EGRESS_MAX);
	__type(key, __u64);
	__type(value, struct agentd_egress);
} egress_limits SEC(".maps");

static __always_inline __u64 clock_of(struct agentd_egress *e, __u64 now)
{
	__u64 next = e->next_ns;
	__u64 floor = now > e->burst_ns ? now - e->burst_ns : 0;

	return next < floor ? floor : next;
}

/* The level-th ancestor's entry (level counted from the attach point's children), or NULL. */
static __always_inline struct agentd_egress *entry(struct __sk_buff *skb, int i, int *end)
{
	__u64 id = bpf_skb_ancestor_cgroup_id(skb, cfg.first_level + i);

	if (!id) {
		*end = 1;	/* below the socket's own cgroup */
		return NULL;
	}
	return bpf_map_lookup_elem(&egress_limits, &id);
}

SEC("cgroup_skb/egress")
int agentd_egress(struct __sk_buff *skb)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 depart = now;
	__u64 len = skb->len;
	__u32 classid = 0;
	int found = 0, end = 0;

	/* Two passes over the levels, each with its own lookups: map value pointers kept
	 * across iterations multiply the verifier's states past its limit. */
	for (int i = 0; i < AGENTD_EGRESS_LEVELS && !end; i++) {
		struct agentd_egress *e = entry(skb, i, &end);

		if (!e)
			continue;
		found = 1;
		if (e->classid)
			classid = e->classid;	/* the deepest level's class */
		if (e->rate_bps) {
			__u64 c = clock_of(e, now);

			if (c > depart)
				depart = c;
		}
	}
	if (!found)
		return 1;
	int drop = depart - now > cfg.horizon_ns;

	end = 0;
	for (int i = 0; i < AGENTD_EGRESS_LEVELS && !end; i++) {
		struct agentd_egress *e = entry(skb, i, &end);

		if (!e || drop)
			continue;
		if (e->rate_bps) {
			__u64 c = clock_of(e, now);

			/* This level spends the packet's length from its own time: a later
			 * departure set by a deeper level is that level's wait, not this one's. */
			e->next_ns = (c > now ? c : now) + len * NSEC_PER_SEC / e->rate_bps;
		}
	}
	/* The counters: the deepest level with an entry only (a third pass, as above). */
	struct agentd_egress *own = 0;

	for (int i = AGENTD_EGRESS_LEVELS - 1; i >= 0 && !own; i--) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, cfg.first_level + i);

		if (id)
			own = bpf_map_lookup_elem(&egress_limits, &id);
	}
	if (!own)
		return 1;
	if (drop) {
		__sync_fetch_and_add(&own->drops, 1);
		return 2;	/* drop, and tell TCP it met congestion */
	}
	__sync_fetch_and_add(&own->bytes, len);
	__sync_fetch_and_add(&own->packets, 1);
	if (depart > now)
		__sync_fetch_and_add(&own->delayed, 1);
	if (depart > now && depart > skb->tstamp)
		skb->tstamp = depart;
	if (classid)
		skb->priority = classid;
	return 1;
}
