"""One owner per tool call: the pipeline that takes it from identity to a frozen Placement.

    identity   the caller and the process to place, held by pidfds (api/ops.py), or the
               process the lifecycle program saw exec (monitor/detect.py)
    classify   one command-line parser says which program does the work
               (policy/match.py over shellwords + forecast/signature.py)
    plan       the policy's class, rule and limits: once per call (Pipeline.plan)
    admit      each stage forecasts its resource once; a call that must wait for any of
               them waits once, in one queue, for all of them (API path)
    place      each stage's share (limits, environment, messages, actions) merged into a
               frozen Placement
    apply      the controller writes the Placement's limits and moves the process in

Both paths use it: the API's `tool_start` (admit, then place with what admit decided)
and automatic detection (place only: decide now, never wait). The stage interface is
agentd/stages.py.
"""

import dataclasses
import logging
import types

from .admission_queue import AdmissionQueue, Wait
from .model import Placement

EMPTY = types.MappingProxyType({})
log = logging.getLogger("agentd.pipeline")


@dataclasses.dataclass(frozen=True)
class Call:
    """A tool call on its way in: what the stages are asked about."""
    agent: object                     # model.Agent
    argv: tuple
    plan: object                      # model.ToolPlan, decided once
    pid: int | None = None
    declared_mem: bool = False        # the client declared its memory (--mem): evidence for admission
    key: str | None = None            # "<agent>/<tool id>", once it has one (place, observe)
    cgroup: str | None = None         # its cgroup, made empty just before place()


@dataclasses.dataclass(frozen=True)
class Share:
    """What one stage adds to a call's Placement."""
    limits: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    messages: tuple = ()
    actions: tuple = ()
    forecast: object = None
    offload_cpu_weight: int | None = None
    gpu: dict | None = None


@dataclasses.dataclass(frozen=True)
class Ticket:
    """An admitted call: its plan and each stage's decision, handed from admit to place."""
    plan: object
    decided: types.MappingProxyType = dataclasses.field(default_factory=lambda: EMPTY)  # stage -> its admit()
    waited: bool = False              # it waited in the queue (other requests ran meanwhile)


class Pipeline:
    def __init__(self, ctl):
        self.ctl = ctl                # the controller: planners per agent, and the stage list
        self.queue = AdmissionQueue()  # calls waiting for room, whatever resource they wait for

    @property
    def stages(self):
        return self.ctl.hooks

    def plan(self, agent, argv, declared_class=None, mem=None):
        """Classify and plan: the only place a tool call's plan is made (a re-classification
        on exec aside, controller.reclassify)."""
        return self.ctl.planner_of(agent).plan_tool(agent, argv, declared_class, mem)

    async def admit(self, agent, argv, declared_class=None, mem=None, pid=None, tell=None):
        """Plan the call and let each stage admit it, in stage order; where any stage
        answers Wait, the call waits once in the queue for all of them. `tell(kind, text)`:
        the API's outbox for this caller (the queue's notice)."""
        plan = self.plan(agent, argv, declared_class, mem)
        call = Call(agent, tuple(argv), plan, pid, mem is not None)
        tell = tell or _silent
        asks = {}
        for stage in self.stages:
            d = await stage.admit(call, tell)
            if d is not None:
                asks[stage] = d
        decided = await self.queue.admit(call, asks, tell)
        return Ticket(plan, types.MappingProxyType(decided), waited=any(isinstance(d, Wait) for d in asks.values()))

    def wake(self):
        """A stage saw room appear: waiting calls that now fit everywhere go on."""
        self.queue.wake()

    def place(self, call, ticket=None):
        """Each stage's share for `call` (with its own admit decision, if any), merged."""
        decided = ticket.decided if ticket is not None else EMPTY
        return merge(call.plan, [_guarded(stage, "place", lambda s: s.place(call, decided.get(s)))
                                 for stage in self.stages])

    def observe(self, call):
        """A dry run's unplaced call: what it would have got; nothing is acted on."""
        return merge(call.plan, [_guarded(stage, "observe", lambda s: s.observe(call)) for stage in self.stages])


def _guarded(stage, what, fn):
    """A fault in one stage costs that stage's share and a log line, never the call."""
    try:
        return fn(stage)
    except Exception:
        log.exception("stage %s.%s failed; the call goes on without its share", type(stage).__name__, what)
        return None


def merge(plan, shares):
    """Later stages win a limit or a variable both set (stage order is App.STAGES)."""
    limits, env, messages, actions = dict(plan.limits), {}, [], []
    forecast = weight = gpu = None
    for s in shares:
        if s is None:
            continue
        limits.update(s.limits)
        env.update(s.env)
        messages += s.messages
        actions += s.actions
        forecast = s.forecast if s.forecast is not None else forecast
        weight = s.offload_cpu_weight if s.offload_cpu_weight is not None else weight
        gpu = s.gpu if s.gpu is not None else gpu
    return Placement(limits=types.MappingProxyType(limits), env=types.MappingProxyType(env),
                     messages=tuple(messages), actions=tuple(actions), forecast=forecast,
                     offload_cpu_weight=weight, gpu=None if gpu is None else types.MappingProxyType(gpu))


def _silent(kind, text):
    pass
