"""One reading of every running tool call's memory per tick, shared by every stage.

The enforcer (re-forecasts, the ladder's candidates), the sample log (`agentd report`'s
memory over time) and the call's recorded peak all read the same Snapshot: one
memory.current read per call per tick (the sum of its processes' RSS on hosts without the
memory controller), not one per reader.
"""

import dataclasses
import time
import types

from ..errors import AgentdError


@dataclasses.dataclass(frozen=True)
class Snapshot:
    mono: float                       # time.monotonic() of the reading
    wall: float                       # time.time() of the reading
    memory: types.MappingProxyType    # tool key -> bytes; a call whose reading failed is absent


class Sampler:
    def __init__(self, ctl, monotonic=time.monotonic, wall=time.time):
        self.ctl = ctl
        self.monotonic, self.wall = monotonic, wall

    def sample(self):
        memory = {}
        for agent in list(self.ctl.agents.values()):
            for tool in list(agent.tools.values()):
                if tool.done:
                    continue
                try:
                    cur = self.ctl.sample_tool(tool)      # also raises the call's recorded peak
                except AgentdError:
                    cur = None
                if cur is not None:
                    memory[tool.key] = cur
        return Snapshot(self.monotonic(), self.wall(), types.MappingProxyType(memory))
