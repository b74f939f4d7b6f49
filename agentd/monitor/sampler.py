"""One reading of every running tool call's and agent's memory per tick, shared by every reader.

The enforcer (re-forecasts, the ladder's candidates), the sample log (`agentd report`'s
memory over time), the call's recorded peak, `agentd status` and the metrics all read the
same Snapshot: one memory.current read per call and per agent per tick (the sum of its
processes' RSS on hosts without the memory controller), not one per reader. Only what is
newer than the latest tick (a call started since) is read when asked. Where the policy
makes I/O a ladder reason, the same pass reads each call's io.stat and each agent's
io.pressure.
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
    agents: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)   # agent id -> bytes; same rule
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
        self.latest = Snapshot(0.0, 0.0, EMPTY)   # before the first tick: nothing read yet

    def sample(self):
        memory, agents, io, stall = {}, {}, {}, {}
        read_io = self._io_wanted()
        for agent in list(self.ctl.agents.values()):
            if read_io:
                stall_us = self._read(agent.cgroup, cgf.IO_PRESSURE, lambda t: psi.parse(t)["some"]["total"])
                if stall_us is not None:
                    stall[agent.agent_id] = stall_us
            tools = {}
            for tool in list(agent.tools.values()):
                if tool.done:
                    continue
                cur = self._read_tool(tool)
                if cur is not None:
                    tools[tool.key] = cur
                if read_io:
                    moved = self._read(tool.cgroup, blkio.IO_STAT, _moved)
                    if moved is not None:
                        io[tool.key] = moved
            memory.update(tools)
            mem = self._read_agent(agent, tools)
            if mem is not None:
                agents[agent.agent_id] = mem
        self.latest = Snapshot(self.monotonic(), self.wall(), types.MappingProxyType(memory),
                               types.MappingProxyType(agents), types.MappingProxyType(io),
                               types.MappingProxyType(stall))
        return self.latest

    # --- what status and metrics read: the latest tick's readings ---------------------------
    def tool_memory(self, tool):
        """The latest tick's reading of `tool`; a call that tick did not read (it started
        since) is read now."""
        cur = self.latest.memory.get(tool.key)
        return cur if cur is not None else self._read_tool(tool)

    def agent_memory(self, agent):
        """The latest tick's reading of `agent`'s cgroup (main and tool calls); an agent that
        tick did not read, or with a call that tick did not read, is read now (so that it
        never shows less than that call)."""
        running = [t for t in list(agent.tools.values()) if not t.done]
        cur = self.latest.agents.get(agent.agent_id)
        if cur is not None and all(t.key in self.latest.memory for t in running):
            return cur
        # Read now without touching any call's recorded peak: the metrics ask from their
        # own thread.
        fs = self.ctl.fs
        try:
            if fs.has(agent.cgroup, cgf.MEMORY_CURRENT):
                return fs.read_int(agent.cgroup, cgf.MEMORY_CURRENT)
            if not self.ctl.sampler:
                return None
            pids = []
            for cg in [agent.main_cgroup] + [t.cgroup for t in running]:
                try:
                    pids += fs.procs(cg)
                except AgentdError:
                    pass              # a call that ended meanwhile
            return self.ctl.sampler(pids)
        except (AgentdError, OSError, ValueError):
            return None

    # --- the reads --------------------------------------------------------------------------
    def _read_tool(self, tool):
        try:
            return self.ctl.sample_tool(tool)         # also raises the call's recorded peak
        except AgentdError:
            return None

    def _read_agent(self, agent, tools):
        """memory.current of the agent's cgroup; without the memory controller the RSS of
        its main processes plus its calls' readings (`tools`). One read per agent per tick
        (no lookup of the file first: a syscall each, twice a second, per agent)."""
        fs = self.ctl.fs
        try:
            text = fs.read_if_offered(agent.cgroup, cgf.MEMORY_CURRENT)
            if text is not None:
                return cgf.parse_int(text)
            if not self.ctl.sampler:
                return None
            return self.ctl.sampler(fs.procs(agent.main_cgroup)) + sum(tools.values())
        except (AgentdError, OSError, ValueError):
            return None

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
