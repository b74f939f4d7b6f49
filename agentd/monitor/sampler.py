"""One reading of every running tool call's memory per tick, shared by every stage.

The enforcer (re-forecasts, the ladder's candidates), the sample log (`agentd report`'s
memory over time) and the call's recorded peak all read the same Snapshot: one
memory.current read per call per tick (the sum of its processes' RSS on hosts without the
memory controller), not one per reader. Where the policy makes I/O a ladder reason, the
same pass reads each call's io.stat and each agent's io.pressure.
"""

import dataclasses
import time
import types

from ..errors import AgentdError
from ..kernel import blkio, psi
from ..kernel import cgroupfs as cgf


EMPTY = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Snapshot:
    mono: float                       # time.monotonic() of the reading
    wall: float                       # time.time() of the reading
    memory: types.MappingProxyType    # tool key -> bytes; a call whose reading failed is absent
    # Read only while the policy makes I/O a ladder reason (io.ladder_stall_us): one
    # io.stat per call and one io.pressure per agent per tick are not free in a busy tree.
    # tool key -> (bytes, operations) it moved so far
    io: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)
    # agent id -> µs some of its tasks waited for I/O so far
    io_stall: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)


class Sampler:
    def __init__(self, ctl, monotonic=time.monotonic, wall=time.time):
        self.ctl = ctl
        self.monotonic, self.wall = monotonic, wall

    def sample(self):
        memory, io, stall = {}, {}, {}
        read_io = self._io_wanted()
        for agent in list(self.ctl.agents.values()):
            if read_io:
                stall_us = self._read(agent.cgroup, cgf.IO_PRESSURE, lambda t: psi.parse(t)["some"]["total"])
                if stall_us is not None:
                    stall[agent.agent_id] = stall_us
            for tool in list(agent.tools.values()):
                if tool.done:
                    continue
                try:
                    cur = self.ctl.sample_tool(tool)      # also raises the call's recorded peak
                except AgentdError:
                    cur = None
                if cur is not None:
                    memory[tool.key] = cur
                if read_io:
                    moved = self._read(tool.cgroup, blkio.IO_STAT, _moved)
                    if moved is not None:
                        io[tool.key] = moved
        return Snapshot(self.monotonic(), self.wall(), types.MappingProxyType(memory),
                        types.MappingProxyType(io), types.MappingProxyType(stall))

    def _io_wanted(self):
        try:
            return self.ctl.planner.policy.io.ladder_stall_us is not None
        except AttributeError:
            return False

    def _read(self, cg, name, parse):
        try:
            text = self.ctl.fs.read_if_offered(cg, name)
            return None if text is None else parse(text)
        except (AgentdError, KeyError, ValueError):
            return None


def _moved(text):
    t = blkio.stat_totals(text)
    return t["rbytes"] + t["wbytes"], t["rios"] + t["wios"]
