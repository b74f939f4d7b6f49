"""One admission queue for every resource, owned by the pipeline (agentd/pipeline.py).

A tool call on the API path asks every stage at admit. A stage whose resource has no
room now answers with a `Wait` instead of its decision. Then the call waits once, here,
for everything it waits for: the agent gets one notice naming each resource, and the
call goes on when every one of those stages has room for it, or when the admission
timeout passes (then each stage says what a call that waited in vain gets, or refuses it).

A stage keeps its own reckoning of its resource; the queue asks it, in `pick`, which of
its waiting requests fit now, and calls `grant` for a call every stage it waits for
picked (at once, in the same step, so that the next pick cannot hand that room out again).
Stages call `wake()` when room may have appeared (a call ended, a tick's reading).
"""

import asyncio
import dataclasses
import logging
import time

from .policy.match import program_of

log = logging.getLogger("agentd.pipeline")


@dataclasses.dataclass(frozen=True)
class Wait:
    """A stage's answer at admit: the call must wait for this stage's resource."""
    resource: str             # what it waits for, as the notice names it: "memory", "a GPU"
    why: str                  # the clause after that: the call's forecast and what holds the room
    until: str                # when it starts: "room appears", "a GPU has room"
    max_wait_s: float         # the policy's admission timeout
    request: object           # the stage's own record, handed back to its pick/grant/expire


class _Entry:
    """A waiting call: the queue's own state, never seen by stages."""
    __slots__ = ("call", "waits", "future", "t0")

    def __init__(self, call, waits, future):
        self.call, self.waits, self.future, self.t0 = call, waits, future, time.monotonic()


class AdmissionQueue:
    def __init__(self):
        self.entries = []         # _Entry, in arrival order

    def waiting(self, stage):
        """How many calls wait for `stage`'s resource now."""
        return sum(stage in e.waits for e in self.entries)

    def requests(self, stage):
        """The waiting requests of `stage`, in arrival order (its own records)."""
        return [e.waits[stage].request for e in self.entries if stage in e.waits]

    async def admit(self, call, asks, tell):
        """`asks`: stage -> what its admit returned (a decision, or a Wait). Returns
        stage -> decision once the call may start; raises what a stage's `expire` raises."""
        waits = {s: a for s, a in asks.items() if isinstance(a, Wait)}
        if not waits:
            return asks
        entry = _Entry(call, waits, asyncio.get_running_loop().create_future())
        self.entries.append(entry)
        tell("queued", notice(call.argv, list(waits.values())))
        granted = None
        try:
            granted = await asyncio.wait_for(asyncio.shield(entry.future),
                                             max(w.max_wait_s for w in waits.values()))
        except asyncio.TimeoutError:
            if entry.future.done():           # granted in the same step the timeout fired
                granted = entry.future.result()
        finally:
            if entry in self.entries:
                self.entries.remove(entry)
        decided = dict(asks)
        if granted is None:
            waited = time.monotonic() - entry.t0
            for stage, w in waits.items():
                decided[stage] = stage.expire(call, w.request, waited)
        else:
            decided.update(granted)
        return decided

    def wake(self):
        """Room may have appeared: let in every call whose stages all have room for it,
        in each stage's own order (its pick)."""
        if not self.entries:
            return
        fits = {}
        for stage in {s for e in self.entries for s in e.waits}:
            try:
                fits[stage] = {id(r): info for r, info in stage.pick(self.requests(stage))}
            except Exception:
                log.exception("stage %s.pick failed; its waiting calls wait on", type(stage).__name__)
                fits[stage] = {}
        for e in list(self.entries):
            if e.future.done() or not all(id(w.request) in fits[s] for s, w in e.waits.items()):
                continue
            waited = time.monotonic() - e.t0
            e.future.set_result({s: s.grant(e.call, w.request, fits[s][id(w.request)], waited)
                                 for s, w in e.waits.items()})
            self.entries.remove(e)

    def release_all(self):
        """The daemon is stopping: every waiting call goes on as if its wait timed out."""
        for e in self.entries:
            if not e.future.done():
                e.future.set_result(None)


def notice(argv, waits):
    """One sentence for the agent naming everything its call waits for."""
    prog = program_of(list(argv))
    limit = max(w.max_wait_s for w in waits)
    if len(waits) == 1:
        w = waits[0]
        return f"[agentd] {prog} is waiting for {w.resource}: {w.why}; it starts when {w.until} (at most {limit:g} s)"
    return (f"[agentd] {prog} is waiting for {' and '.join(w.resource for w in waits)}: "
            f"{'; '.join(w.why for w in waits)}; it starts when there is room for all of them (at most {limit:g} s)")
