"""The stage interface: what a stage of the daemon may implement, declared once.

A stage is one resource or one concern (memory enforcement, CPU scheduling, GPU
placement, swap, automatic detection, the sample log). `daemon.py` builds the stages
from a list (App.STAGES) and every caller calls these methods directly: a stage that
has nothing to do for one of them inherits the no-op below, so nothing is discovered
with getattr and a newcomer reads here what a stage can be asked.

A tool call passes the stages twice before it runs (agentd/pipeline.py):
- `admit(call, tell)`: the API path only, before the call exists. The stage forecasts
  what it needs of its resource and returns its decision, or None, or an
  `admission_queue.Wait` when there is no room now: then the call waits once, in the
  pipeline's one admission queue, for every stage that said Wait. `admit` answers without
  suspending (no await that yields): waiting is the queue's alone, and the API checks its
  caller's identity again only after a call waited there. While it waits the queue
  asks the stage `pick(requests)` (which of its waiting requests fit now, in its order);
  when all its stages picked it, each gets `grant(call, request, info, waited)`, and at
  the timeout `expire(call, request, waited)`, which return the stage's decision (or raise
  a RequestError that refuses the call). A stage calls `ctl.pipeline.wake()` when room
  may have appeared.
- `place(call, decided)`: both paths (API and automatic detection). `decided` is what the
  stage's own `admit` returned (None on the automatic path: decide now, never wait). It
  returns a `Share` (limits, environment, messages, actions) the pipeline merges into the
  call's frozen Placement, which the controller then applies.
Stages never write to a client and never write a limit, freeze, thaw or kill themselves:
messages go back in their Share (or through `tell`), actions through the actuator.
"""

from typing import Protocol, runtime_checkable

from .errors import AgentdError, FeatureMissing


@runtime_checkable
class StageProtocol(Protocol):
    name: str

    # --- daemon lifetime
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def before_sweep(self) -> None: ...
    def on_memory_size(self, total: int) -> None: ...

    # --- a tool call before it runs (agentd/pipeline.py)
    async def admit(self, call, tell): ...
    def place(self, call, decided): ...
    def observe(self, call): ...
    def pick(self, requests) -> list: ...
    def grant(self, call, request, info, waited): ...
    def expire(self, call, request, waited): ...

    # --- agents and tool calls while they run
    def on_sample(self, snapshot) -> None: ...
    def on_agent_start(self, agent) -> None: ...
    def before_agent_end(self, agent) -> None: ...
    def on_agent_end(self, agent) -> None: ...
    def on_tool_start(self, agent, tool) -> None: ...
    def on_tool_end(self, agent, tool, result) -> None: ...

    # --- what status, doctor and metrics read
    def modes(self) -> dict: ...
    def mode_details(self) -> dict: ...
    def metric_stats(self) -> dict: ...


class Stage:
    """No-op defaults of StageProtocol: a stage subclasses this and overrides what it does."""

    name = "stage"

    async def start(self):
        pass

    async def stop(self):
        pass

    def before_sweep(self):
        pass

    def on_memory_size(self, total):
        pass

    async def admit(self, call, tell):
        return None

    def place(self, call, decided):
        return None

    def observe(self, call):
        """A dry run's automatically detected call, which is not placed: what the stage
        would have given it (a Share), for the `tool_observed` event. Nothing is acted on."""
        return None

    def pick(self, requests):
        """[(request, info)] of this stage's waiting requests that fit now (a stage that
        never answers Wait is never asked)."""
        return [(r, None) for r in requests]

    def grant(self, call, request, info, waited):
        """The decision for a call let in after `waited` seconds (`info`: from pick)."""
        return request

    def expire(self, call, request, waited):
        """The decision for a call whose wait timed out (or raise RequestError)."""
        return request

    def on_sample(self, snapshot):
        """The tick's reading of every running call's memory (monitor/sampler.py)."""

    def on_agent_start(self, agent):
        pass

    def before_agent_end(self, agent):
        pass

    def on_agent_end(self, agent):
        pass

    def on_tool_start(self, agent, tool):
        pass

    def on_tool_end(self, agent, tool, result):
        pass

    def modes(self):
        return {}

    def mode_details(self):
        return {}

    def metric_stats(self):
        return {}


# --- build conditions: what a stage's build(app) checks before the daemon runs it ---------

def offered(app, name):
    """Does the kernel offer cgroup file `name` under agentd's agents cgroup? Checked once,
    there: a controller or feature missing at that level is missing in every agent's and
    tool call's cgroup below it."""
    try:
        return app.fs.has(app.ctl.agents_cgroup, name)
    except AgentdError:
        return False


def require_offered(app, name, why):
    """FeatureMissing (the daemon's one log line for a stage that cannot run) unless `name`
    is offered; `why` says what its absence usually means."""
    if not offered(app, name):
        raise FeatureMissing(f"the kernel offers no {name} under {app.ctl.agents_cgroup} ({why})")
