"""agentd: a cgroup v2 resource controller for hosts that run AI coding agents."""

__version__ = "0.1.0"
API_VERSION = 1
