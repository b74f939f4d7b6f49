"""The swap stage: each tool call's share of memory.swap.max / memory.zswap.max.

Only where the host has swap: without any, the files bound nothing and writing them
would only add lines to every call's limits. The host's swap is read again at most every
RECHECK_S (a `swapon` while the daemon runs applies to the calls placed after it), never
on every call: a tool call's start is the daemon's hot path.
"""

import logging
import time

from ..errors import AgentdError
from ..kernel import swap as ksw
from ..pipeline import Share
from ..stages import Stage, require_offered

log = logging.getLogger("agentd.swap")

RECHECK_S = 10.0


class SwapStage(Stage):
    name = "swap"

    def __init__(self, policy_fn, swap_fn=ksw.swap_total, clock=time.monotonic):
        self.policy_fn = policy_fn    # the current policy (a reload swaps it)
        self.swap_fn = swap_fn        # bytes of swap the host has
        self.clock = clock
        self._swap = None
        self._checked = float("-inf")
        self._warned = False

    @classmethod
    def for_app(cls, app):
        # A memory controller with no swap file (CONFIG_SWAP=n, or swapaccount=0 on old
        # kernels) has none below agentd's root either.
        require_offered(app, ksw.MEMORY_SWAP_MAX, "no memory controller there, or a kernel without swap")
        return cls(lambda: app.policy)

    def host_has_swap(self):
        now = self.clock()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            try:
                self._swap = self.swap_fn()
            except AgentdError as err:
                if not self._warned:
                    log.warning("cannot read the host's swap (%s): tool calls' swap is left as it is", err)
                    self._warned = True
                self._swap = 0
        return bool(self._swap)

    def limits(self, agent, plan):
        """{file: value} of the swap limits for `agent`'s call planned as `plan` ({} without swap).
        What this trusts: the policy (the agent's own only where it tightens the daemon's,
        policy/overlay.py) and the host's SwapTotal; the files go on the call's own cgroup,
        which the daemon made before the call's first process ran."""
        if not self.host_has_swap():
            return {}
        try:
            # The agent's own policy, where it brought one (policy/overlay.py), bounds it.
            value = (agent.view or self.policy_fn()).tool_class(plan.tool_class).memory.swap_max
        except AgentdError:
            return {}             # a class the policy no longer has (a reload): nothing to add
        v = "max" if value is None else str(value)
        # zswap holds swapped pages compressed in memory: the same bound, where offered.
        return {ksw.MEMORY_SWAP_MAX: v, ksw.MEMORY_ZSWAP_MAX: v}

    def place(self, call, decided):
        lim = self.limits(call.agent, call.plan)
        return Share(limits=lim) if lim else None

    def observe(self, call):
        return self.place(call, None)
