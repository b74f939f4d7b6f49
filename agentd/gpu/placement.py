"""Placement of GPU tool calls: pure decisions over literals, no NVML and no clock.

Every time a GPU call asks to start, or GPU memory comes free, the hook builds the list of
calls asking (`Request`s: the new one and those already waiting), the devices' room and the
agents' budgets, and `place()` answers for each call: run on a GPU, offload to the CPU, or
keep waiting. The rules, in order:

1. Calls are considered by priority: the agent class's GPU priority first, then the tool
   call's priority, then arrival order. A higher-priority call takes the GPU first.
2. An agent's calls may not take its GPU memory (held + reserved + forecast) past the agent
   class's `memory_budget`. Such a call gets its class's fallback; a call whose forecast alone
   exceeds the budget is offloaded, as waiting could never help.
3. A call goes to the device with the most room left that fits its forecast (spreading calls
   over devices, as compute contends as well as memory).
4. Once a waiting call of some priority finds no room, no call considered after it (lower or
   equal priority, later arrival) takes GPU room: room that frees up goes to the waiting call
   first. Calls whose class says `offload` are offloaded instead of taking that room.
"""

import dataclasses

GPU, OFFLOAD, WAIT, CPU, UNMANAGED = "gpu", "offload", "wait", "cpu", "unmanaged"
OUTCOMES = (GPU, OFFLOAD, WAIT, CPU, UNMANAGED)


@dataclasses.dataclass(frozen=True)
class Request:
    key: str                 # who asks (agent/pid, or a tool call's key)
    agent: str
    priority: tuple          # (agent GPU priority, tool priority): larger first
    seq: int                 # arrival order: smaller first among equal priorities
    forecast: int            # GPU memory the call is expected to need, bytes
    fallback: str = OFFLOAD  # offload | wait: what the class says when no GPU has room


@dataclasses.dataclass(frozen=True)
class Room:
    index: int
    total: int               # bytes
    used: int                # bytes held now (every process, as NVML counts)
    reserved: int = 0        # forecast of placed calls not yet holding it

    @property
    def free(self):
        return max(0, self.total - self.used - self.reserved)


@dataclasses.dataclass(frozen=True)
class Budget:
    limit: int | None        # bytes; None = no budget
    held: int = 0            # the agent's GPU memory now plus its placed calls' reservations


@dataclasses.dataclass(frozen=True)
class Placement:
    key: str
    outcome: str             # gpu | offload | wait
    device: int | None = None
    reason: str = ""         # why not a GPU (empty when placed)
    free: int = 0            # most room any device had when decided (for the agent's sentence)


def order(requests):
    return sorted(requests, key=lambda r: (tuple(-p for p in r.priority), r.seq))


def place(requests, rooms, budgets=None):
    """{key: Placement} for every request; `rooms` is a list of Room, `budgets` {agent: Budget}."""
    free = {r.index: r.free for r in rooms}
    held = {a: b.held for a, b in (budgets or {}).items()}
    out = {}
    blocker = None
    for r in order(requests):
        most = max(free.values(), default=0)
        b = (budgets or {}).get(r.agent)
        if b is not None and b.limit is not None:
            if r.forecast > b.limit:
                out[r.key] = Placement(r.key, OFFLOAD, reason="over_budget_alone", free=most)
                continue
            if held.get(r.agent, 0) + r.forecast > b.limit:
                out[r.key] = Placement(r.key, r.fallback, reason="agent_budget", free=most)
                continue
        if blocker is not None:
            out[r.key] = Placement(r.key, r.fallback, reason="higher_priority_waiting" if blocker.priority > r.priority
                                   else "earlier_waiting", free=most)
            continue
        fits = [i for i, f in free.items() if f >= r.forecast]
        if not fits:
            out[r.key] = Placement(r.key, r.fallback, reason="no_room", free=most)
            if r.fallback == WAIT:
                blocker = r
            continue
        dev = max(fits, key=lambda i: (free[i], -i))
        free[dev] -= r.forecast
        held[r.agent] = held.get(r.agent, 0) + r.forecast
        out[r.key] = Placement(r.key, GPU, device=dev, free=most)
    return out


def gpu_env(uuid, mps=False, threads=None, pinned_limit=None):
    """Environment for a call placed on the GPU `uuid` (a UUID names the same device for CUDA
    and NVML whatever their index order). MPS settings only when an MPS daemon serves them;
    inside the call the device is ordinal 0, which the pinned-memory limit is keyed by."""
    env = {"CUDA_VISIBLE_DEVICES": uuid}
    if mps and threads is not None:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(threads))
    if mps and pinned_limit is not None:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={max(1, pinned_limit >> 20)}M"
    return env


def cpu_env():
    """An empty CUDA_VISIBLE_DEVICES hides every GPU: CUDA programs see none and fall back
    to their CPU path (or fail early, saying so) instead of allocating on a full GPU."""
    return {"CUDA_VISIBLE_DEVICES": ""}
