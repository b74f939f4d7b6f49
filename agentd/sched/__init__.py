"""CPU priorities for agents and tool calls: agentd's sched_ext scheduler where the
kernel has sched_ext, cgroup cpu.weight (or nice) where it does not.

  weights.py   policy -> weights, latency classes, agent slots (pure)
  fallback.py  cpu.weight per cgroup, nice per task
  hook.py      the daemon hook: mode choice, ejection watch, retry with backoff

The BPF scheduler's loader and its ctypes mirror of bpf/scx_agentd.h are kernel
adapters, beside the other BPF loaders: agentd/kernel/bpf_scx.py, bpf_scx_types.py.

`build(app)` is what the daemon calls; it returns the hook object.
"""

from .hook import CpuScheduler


def build(app):
    return CpuScheduler(app)
