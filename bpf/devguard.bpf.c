// SPDX-License-Identifier: GPL-2.0
/*
 * Hide GPUs from a tool call: a cgroup device program (BPF_PROG_TYPE_CGROUP_DEVICE).
 *
 * A tool call that agentd's GPU placement sends to the CPU gets CUDA_VISIBLE_DEVICES=""
 * when it starts through `agentd tool`; a call detected automatically has already exec'd
 * with the agent's environment, which agentd cannot change. This program makes the
 * decision hold for both: attached to the call's cgroup, it refuses every access (open,
 * read, write, mknod) to the character devices whose major is in the read-only config —
 * the NVIDIA driver's (195: /dev/nvidia<N>, nvidiactl, nvidia-modeset) and nvidia-uvm's
 * (a dynamic major the loader reads from /proc/devices). The kernel asks the program at
 * open(2), so the call (and everything it forks, which stays in its cgroup) gets EPERM,
 * and CUDA reports no device instead of allocating on a GPU that has no room.
 *
 * Device programs run for every device open in the cgroup, so the check is a short
 * bounded loop over at most AGENTD_DEVGUARD_MAX_MAJORS values. Return 1 allows, 0 denies;
 * with BPF_F_ALLOW_MULTI every program on the cgroup's path must allow, so this one only
 * ever narrows what a container runtime's device program above it allows.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "agentd.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct agentd_devguard_config cfg = {
	.nr_majors = 0,
};

SEC("cgroup/dev")
int agentd_devguard(struct bpf_cgroup_dev_ctx *ctx)
{
	/* access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_* */
	if ((ctx->access_type & 0xffff) != BPF_DEVCG_DEV_CHAR)
		return 1;
	for (int i = 0; i < AGENTD_DEVGUARD_MAX_MAJORS; i++) {
		if (i >= cfg.nr_majors)
			break;
		if (ctx->major == cfg.majors[i])
			return 0;
	}
	return 1;
}
