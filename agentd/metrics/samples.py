"""Periodic `sample` events: memory over time per running tool call, for `agentd report`.

tool_start/tool_end say what a call was given and what it peaked at; a report that draws
memory over time needs the points in between. This hook emits one small event per
running tool call every `interval_s`, skipping a point when the value moved less than
`min_change` (relative) and the last point is younger than `max_gap_s`, so an idle
long-running call costs one line per `max_gap_s`, not one per tick.

Wiring (daemon.py, App._build_hooks): `self.hooks.append(SampleLog(self))`.
"""

import logging
import time

from ..stages import Stage

log = logging.getLogger("agentd.metrics")


class SampleLog(Stage):
    name = "samples"

    def __init__(self, app, interval_s=1.0, min_change=0.05, max_gap_s=10.0):
        self.app = app
        self.interval_s = interval_s
        self.min_change = min_change
        self.max_gap_s = max_gap_s
        self._last = {}           # tool key -> (ts, bytes)
        self._ticked = float("-inf")

    def on_sample(self, snapshot):
        """The daemon's tick: every `interval_s` (a few ms early is on time), from its one
        reading of the calls' memory."""
        if snapshot.mono - self._ticked < self.interval_s * 0.9:
            return
        self._ticked = snapshot.mono
        self.tick(snapshot.wall, snapshot.memory)

    def tick(self, now, memory=None):
        """`memory`: tool key -> bytes read this tick; None reads each call."""
        ctl = self.app.ctl
        live = set()
        for agent in list(ctl.agents.values()):
            for tool in list(agent.tools.values()):
                if tool.done:
                    continue
                live.add(tool.key)
                cur = ctl.sample_tool(tool) if memory is None else memory.get(tool.key)
                if cur is None:
                    continue
                last = self._last.get(tool.key)
                if last is not None:
                    moved = abs(cur - last[1]) > self.min_change * max(last[1], 1)
                    if not moved and now - last[0] < self.max_gap_s:
                        continue
                self._last[tool.key] = (now, cur)
                self.app.events.emit("sample", agent=agent.agent_id, tool=tool.tool_id,
                                     tool_class=tool.plan.tool_class, memory_bytes=cur)
        for key in list(self._last):
            if key not in live:
                del self._last[key]

    def on_tool_start(self, agent, tool):
        """A first point at start so short calls get a line, not only an end marker.
        A call the launcher clones into its cgroup after this (no pid yet) holds nothing:
        its point is 0 without reading the empty cgroup."""
        if tool.pid is None and tool.origin == "launcher":
            cur = 0
        else:
            try:
                cur = self.app.ctl.sample_tool(tool)
            except Exception:
                return
        if cur is not None:
            self._last[tool.key] = (time.time(), cur)
            self.app.events.emit("sample", agent=agent.agent_id, tool=tool.tool_id,
                                 tool_class=tool.plan.tool_class, memory_bytes=cur)
