"""The small tree of domain errors every layer raises.

Kernel adapters convert OSError into these once, at the edge, so the layers above never
inspect errno themselves.
"""


class AgentdError(Exception):
    """Base class: a message fit to show a person, no traceback needed."""


class KernelError(AgentdError):
    """A kernel interface refused or failed an operation."""


class CgroupGone(KernelError):
    """The cgroup (or the process) vanished mid-operation. A normal outcome, not a crash."""


class ProcessGone(KernelError):
    """A process exited between lookup and use."""


class FeatureMissing(KernelError):
    """A kernel feature agentd would use is not available on this host."""


class PolicyError(AgentdError):
    """A policy failed validation; carries every problem with file:line."""

    def __init__(self, problems, source="<policy>"):
        # One message is one problem: list("text") would split it into characters.
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__("\n".join(str(p) for p in self.problems))


class RequestError(AgentdError):
    """A malformed or unauthorised API request. `code` is a stable machine-readable word."""

    def __init__(self, code, message):
        self.code = code
        super().__init__(message)


class BpfError(KernelError):
    """Loading, attaching or talking to a BPF program failed; carries libbpf's message."""
