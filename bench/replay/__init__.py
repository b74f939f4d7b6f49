"""Multi-tenant replay of recorded agent traces on a real kernel: a benchmark harness, not
part of the installed agentd (run it as `python3 bench/replay --traces DIR ...`).

trace.py turns a trace of the shared format into a schedule (baseline memory, tool calls
with memory profiles), scaled in time and memory; alloc.c is the process that replays it
(agent role and tool-call role); runner.py runs one group of agents under one mode inside the
kernel-tier VM; scenario.py builds the isolation and density scenarios from groups;
report.py aggregates and prints; vm.py boots the VM from the host; cli.py is the command
line (host side and in-guest side).
"""
