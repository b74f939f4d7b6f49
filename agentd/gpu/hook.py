"""The GPU stage of the daemon: placement at tool start, budgets while running, stats.

Flow: NVML (devices, processes) -> attribution (pid -> cgroup -> agent/tool call) ->
placement (placement.py, pure) -> the tool call's environment and cpu.weight -> feedback.

- `admit()` (before the call exists) forecasts the planned call's GPU memory and asks
  placement.place(): a call that must wait for a GPU answers with a Wait and waits in the
  pipeline's admission queue (agentd/admission_queue.py), which asks `pick` here whether a
  GPU has room for it, until room frees up or the admission timeout passes. Its decision is
  reserved in `pending` and handed to `place()` by the pipeline (agentd/pipeline.py).
- `place()` turns the decision into the call's share of its Placement (effects.py):
  CUDA_VISIBLE_DEVICES (and MPS variables), the offload CPU weight for the CPU stage, the
  device program that hides the GPUs from a call sent to the CPU, a sentence for the agent.
  Calls that reach it without `admit` (the automatic path) are decided there and never wait.
- A periodic tick re-reads NVML, updates each call's GPU peak, applies each agent class's
  `over_budget` action to the agent's lowest-priority GPU call, and wakes waiters.
"""

import asyncio
import dataclasses
import logging
import time

from ..admission_queue import Wait
from ..clip import clip_argv
from ..errors import AgentdError, ProcessGone, RequestError
from ..forecast import Forecast, censored
from ..units import format_size, parse_size
from . import budget, effects
from .effects import Placed
from . import placement as pl
from .history import FLOOR_BYTES
from .nvml import NvmlError
from ..stages import Stage

log = logging.getLogger("agentd.gpu")

RESERVATION_TTL_S = 30.0      # a decision not claimed by a starting call within this is dropped
MPS_RECHECK_S = 5.0


@dataclasses.dataclass
class Decision:
    outcome: str
    device: int | None = None
    forecast: int = 0
    reason: str = ""
    free: int = 0
    waited: float | None = None
    timed_out: bool = False
    ts: float = dataclasses.field(default_factory=time.monotonic)
    key: tuple | None = None          # its reservation in GpuHook.pending, from admit to place


def _program(argv):
    from ..policy.match import program_of as prog
    return prog(argv)


class GpuHook(Stage):
    name = "gpu"

    def __init__(self, app, nvml, forecasts, interval_s=1.0, devguard=None):
        self.app = app
        self.devguard = devguard  # kernel/bpf_devguard.DevGuard, or None: CUDA_VISIBLE_DEVICES only
        self._guard_error = None
        self.nv = nvml
        self.fc = forecasts
        self.interval_s = interval_s
        self.devices = nvml.devices()
        self.max_total = max(d.memory_total for d in self.devices)
        self.placed = {}          # tool key -> Placed
        self.pending = {}         # Decision.key -> Decision, from admit (or a wait's end) to place
        self.tool_usage = {}      # tool key -> bytes held now
        self.agent_usage = {}     # agent -> bytes held now (tool calls and main cgroup)
        self.agent_device = {}    # (agent, device index) -> bytes
        self.unattributed = 0     # bytes held by processes outside any agent
        self.notified = set()     # tool keys told they are over budget (until the agent is back under)
        self.killed = set()
        self.seq = 0
        self._mps = (None, 0.0)
        self._nvml_error = None
        self.task = None
        self.counters = {"placements": {o: 0 for o in pl.OUTCOMES}, "budget_actions": {"notify": 0, "kill": 0},
                         "queued_total": 0, "wait_seconds_total": 0.0, "nvml_errors_total": 0}

    @property
    def policy(self):
        return self.app.policy            # re-read: a reload swaps it

    # --- readings ----------------------------------------------------------------
    def mps(self):
        val, at = self._mps
        if val is None or time.monotonic() - at > MPS_RECHECK_S:
            val = self.nv.mps_active()
            self._mps = (val, time.monotonic())
        return val

    def refresh(self):
        """Read devices and processes; attribute each process's GPU memory through its cgroup."""
        try:
            devices = self.nv.devices()
            procs = self.nv.processes()
        except NvmlError as err:
            self.counters["nvml_errors_total"] += 1
            if str(err) != self._nvml_error:
                log.warning("GPU readings failed, keeping the last ones: %s", err)
                self._nvml_error = str(err)
            return False
        self._nvml_error = None
        self.devices = devices
        tools, agents, per_dev, other = {}, {}, {}, 0
        ctl = self.app.ctl
        for p in procs:
            used = p.used_bytes or 0
            try:
                agent, tool = ctl.agent_of_cgroup(self.app.procfs.cgroup(p.pid))
            except (ProcessGone, AgentdError):
                agent = tool = None       # ended since NVML listed it, or in another pid namespace
            if agent is None:
                other += used
                continue
            agents[agent.agent_id] = agents.get(agent.agent_id, 0) + used
            k = (agent.agent_id, p.device)
            per_dev[k] = per_dev.get(k, 0) + used
            if tool is not None:
                tools[tool.key] = tools.get(tool.key, 0) + used
                pc = self.placed.get(tool.key)
                if pc is None:            # a call agentd did not place (auto, unmanaged) holds GPU memory
                    pc = self.placed[tool.key] = Placed(agent.agent_id, p.device, 0)
                pc.peak = max(pc.peak, tools[tool.key])
        self.tool_usage, self.agent_usage, self.agent_device, self.unattributed = tools, agents, per_dev, other
        return True

    def budget_limit(self, agent_class):
        try:
            g = self.policy.agent_class(agent_class).gpu
        except (AgentdError, RequestError):
            return None
        return g.budget_bytes(self.max_total)

    def agent_gpu(self, agent):
        try:
            return self.policy.agent_class(agent.agent_class).gpu
        except (AgentdError, RequestError):
            from ..policy.resources import AgentGpu
            return AgentGpu()

    def _reservations(self):
        """(device -> bytes, agent -> bytes) forecast but not yet held by placed or admitted calls."""
        dev, agent = {}, {}
        now = time.monotonic()
        for k in [k for k, d in self.pending.items() if now - d.ts > RESERVATION_TTL_S]:
            del self.pending[k]
        items = [(pc.agent, pc.device, pc.forecast - self.tool_usage.get(key, 0)) for key, pc in self.placed.items()]
        items += [(k[0], d.device, d.forecast) for k, d in self.pending.items() if d.outcome == pl.GPU]
        for a, d, r in items:
            if d is None or r <= 0:
                continue
            dev[d] = dev.get(d, 0) + r
            agent[a] = agent.get(a, 0) + r
        return dev, agent

    def _inputs(self):
        dev_res, agent_res = self._reservations()
        rooms = [pl.Room(d.index, d.memory_total, d.memory_used, dev_res.get(d.index, 0)) for d in self.devices]
        budgets = {}
        for a in self.app.ctl.agents.values():
            budgets[a.agent_id] = pl.Budget(self.budget_limit(a.agent_class),
                                            self.agent_usage.get(a.agent_id, 0) + agent_res.get(a.agent_id, 0))
        return rooms, budgets

    # --- placement -----------------------------------------------------------------
    def _request(self, agent, plan, argv, key):
        """(outcome for calls place() need not see, or None; Request or None)."""
        d = getattr(plan, "decision", None)
        device = getattr(d, "device", "auto")
        if device == "cpu":
            return pl.CPU, None
        f = self.fc.forecast(argv, plan.tool_class, agent.agent_id, agent.agent_class)
        tg = getattr(d, "gpu", None)
        prior = getattr(tg, "prior", None)
        if f.confidence <= 0 and prior is not None:
            # No GPU history behind the forecast: the policy's prior for this class or rule
            # speaks instead (a percentage is of the largest GPU).
            f = Forecast(max(parse_size(prior, self.max_total), FLOOR_BYTES), 0.0, "prior:policy")
        elif device == "auto" and f.confidence <= 0:
            return pl.UNMANAGED, None     # no sign it uses a GPU and no prior: leave it alone, measure it
        self.seq += 1
        return None, pl.Request(key or f"{agent.agent_id}/request-{self.seq}", agent.agent_id, (self.agent_gpu(agent).priority, plan.priority), self.seq,
                                min(f.peak_bytes, self.max_total), getattr(tg, "fallback", pl.OFFLOAD))

    def _decide_now(self, req):
        rooms, budgets = self._inputs()
        waiting = [w for w, _ in self.app.ctl.pipeline.queue.requests(self)]
        return pl.place(waiting + [req], rooms, budgets)[req.key]

    async def admit(self, call, tell):
        try:
            return self._admit(call)
        except (RequestError, asyncio.CancelledError):
            raise
        except Exception:             # a fault in the GPU stage must not refuse tool calls
            log.exception("GPU placement of %s failed; the call runs unplaced", " ".join(call.argv[:4]))
            return None

    def _admit(self, call):
        agent = call.agent
        outcome, r = self._request(agent, call.plan, list(call.argv), None)
        if r is None:
            return self._pend(agent, Decision(outcome))
        self.refresh()
        p = self._decide_now(r)
        if p.outcome != pl.WAIT:
            return self._pend(agent, Decision(p.outcome, p.device, r.forecast, p.reason, p.free))
        return self._wait(call, r, p)

    def _pend(self, agent, d):
        """Reserve `d` for its call until place() claims it (or RESERVATION_TTL_S)."""
        self.seq += 1
        d.key = (agent.agent_id, self.seq)
        self.pending[d.key] = d
        return d

    def _wait(self, call, r, p):
        """No GPU has room now and the class waits: a Wait for the admission queue."""
        self.counters["queued_total"] += 1
        self.app.events.emit("action", agent=call.agent.agent_id, tool=None, action="gpu_queue",
                             argv=clip_argv(list(call.argv))[:8],
                             reason=p.reason, forecast_bytes=r.forecast)
        return Wait("a GPU", f"it is forecast to need {format_size(r.forecast)} of GPU memory and {effects.why(p, r)}",
                    "a GPU has room", self.policy.admission.max_wait_s, (r, p))

    def pick(self, requests):
        """The waiting calls a GPU has room for now, highest priority first (placement.place)."""
        rooms, budgets = self._inputs()
        res = pl.place([r for r, _ in requests], rooms, budgets)
        return [(req, res[req[0].key]) for req in requests if res[req[0].key].outcome != pl.WAIT]

    def grant(self, call, request, got, waited):
        r, _ = request
        self.counters["wait_seconds_total"] += waited
        return self._pend(call.agent, Decision(got.outcome, got.device, r.forecast, got.reason, got.free, waited))

    def expire(self, call, request, waited):
        r, p = request
        self.counters["wait_seconds_total"] += waited
        if self.policy.admission.on_timeout == "fail":
            raise RequestError("no_gpu", f"{_program(call.argv)} waited {waited:.0f} s for a GPU and none had "
                                         f"{format_size(r.forecast)} free; try again later or run it on the CPU")
        return self._pend(call.agent, Decision(pl.OFFLOAD, None, r.forecast, "wait_timed_out", p.free, waited, True))

    def _wake(self, fresh=False):
        """Hand freed room to waiting calls, highest priority first (the pipeline's queue
        asks pick)."""
        q = self.app.ctl.pipeline.queue
        if not q.waiting(self):
            return
        if not fresh:
            self.refresh()
        q.wake()

    def place(self, call, decided):
        """The call's GPU or CPU, its environment and sentence (effects.py). A call that
        comes without an admit decision (the automatic path) is decided now, never waits."""
        d = decided
        if d is not None:
            self.pending.pop(d.key, None)
        else:
            outcome, r = self._request(call.agent, call.plan, list(call.argv), call.key)
            if r is None:
                d = Decision(outcome)
            else:
                self.refresh()
                p = self._decide_now(r)
                d = Decision(pl.OFFLOAD if p.outcome == pl.WAIT else p.outcome, p.device, r.forecast, p.reason, p.free)
        return effects.share(self, call, d)

    def on_tool_end(self, agent, tool, result):
        pc = self.placed.pop(tool.key, None)
        self.notified.discard(tool.key)
        self.killed.discard(tool.key)
        held = self.tool_usage.pop(tool.key, 0)
        if pc is not None and agent is not None:
            peak = max(pc.peak, held)
            result["gpu_peak_bytes"] = peak
            self.fc.record(tool.argv, tool.plan.tool_class, agent.agent_id, agent.agent_class, peak,
                           result.get("wall_s") or 0.0, action=result.get("outcome") or "",
                           censored=censored(result.get("outcome"), [a.get("action") for a in tool.actions]))
        self._wake()

    # --- while running -------------------------------------------------------------
    def tick(self):
        if self.refresh():
            self.enforce_budgets()
        self._wake(fresh=True)

    def enforce_budgets(self):
        budget.enforce(self)

    # --- daemon hooks --------------------------------------------------------------
    async def start(self):
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.tick()
            except Exception:
                log.exception("GPU tick failed")

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.fc.close()
        self.nv.close()
        if self.devguard is not None:
            self.devguard.close()     # attachments stay with their cgroups

    def modes(self):
        # A mode word (a metric label): how a call sent to the CPU is kept off the GPUs.
        return {"gpu": "device-program" if self.devguard is not None else "environment"}

    def mode_details(self):
        n = len(self.devices)
        return {"gpu": {"mode": self.modes()["gpu"], "gpus": n, "driver": self.nv.driver, "mps": bool(self._mps[0]),
                        "history": self.fc.mode,
                        "hidden_majors": list(self.devguard.majors) if self.devguard is not None else []}}

    def metric_stats(self):
        """The collector's contract (metrics/collector.py STATS_KEYS) plus GPU placement counters."""
        return {
            "gpus": [{"gpu": d.index, "memory_used_bytes": d.memory_used, "memory_total_bytes": d.memory_total,
                      "utilization_ratio": d.utilization} for d in self.devices],
            "agent_gpu_memory": {(a, str(i)): n for (a, i), n in self.agent_device.items()},
            "gpu_placements": dict(self.counters["placements"]),
            "gpu_budget_actions": dict(self.counters["budget_actions"]),
            "gpu_waiting": self.app.ctl.pipeline.queue.waiting(self),
            "gpu_queued_total": self.counters["queued_total"],
            "gpu_wait_seconds_total": round(self.counters["wait_seconds_total"], 3),
            "gpu_unattributed_bytes": self.unattributed,
        }

    @property
    def stats(self):
        return self.metric_stats()
