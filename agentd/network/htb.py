"""Which htb classes stand for which cgroups (pure: no I/O).

htb queues packets in leaf classes only, so a limited agent is two classes: a group with
the agent's rate as its ceiling, and a leaf below it for the agent's own processes; a
limited tool call of that agent is a leaf beside it, and a tool call of an agent with no
limit a leaf at the top. A tool call with no limit of its own sends through its agent's
leaf (the BPF program, or the nftables rules, pick the deepest limited level).
"""

from dataclasses import dataclass
from typing import Optional

MAX_MINOR = 0xFFFF


@dataclass(frozen=True)
class HtbClass:
    minor: int
    rate: int                 # bytes/s guaranteed
    ceil: int                 # bytes/s at most
    burst: int
    parent: Optional[int]     # minor of the parent class; None: the root
    leaf: bool = True         # holds packets (gets a leaf qdisc); False: a group of classes


class Minors:
    """Class minors 1..0xFFFF, reused after release."""

    def __init__(self):
        self.free, self.next = [], 1

    def take(self):
        if self.free:
            return self.free.pop()
        if self.next > MAX_MINOR:
            raise OverflowError("no htb class minor left")
        self.next += 1
        return self.next - 1

    def release(self, minor):
        self.free.append(minor)


def agent_classes(minors, rate, burst):
    """(group, own leaf) for an agent limited to `rate`; packets go to the leaf."""
    group = HtbClass(minors.take(), rate, rate, burst, None, leaf=False)
    # The agent's own processes are guaranteed a tenth of its rate and may take all of it.
    leaf = HtbClass(minors.take(), max(rate // 10, 1), rate, burst, group.minor)
    return group, leaf


def tool_class(minors, rate, burst, agent_group=None):
    """The leaf for a tool call limited to `rate`, below its agent's group if it has one
    (there the agent's ceiling bounds it too)."""
    if agent_group is not None:
        rate = min(rate, agent_group.ceil)
    return HtbClass(minors.take(), rate, rate, burst, agent_group.minor if agent_group else None)
