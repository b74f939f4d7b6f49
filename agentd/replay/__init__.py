"""Multi-tenant replay of recorded agent traces on a real kernel (bench/replay.py).

trace.py turns a trace of the shared format into a schedule (baseline memory, tool calls
with memory profiles), scaled in time and memory; alloc.c is the process that replays it
(agent role and tool-call role); runner.py runs the scenarios inside the kernel-tier VM;
report.py aggregates and prints; vm.py boots the VM from the host.
"""
