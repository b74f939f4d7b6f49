"""The pressure escalation ladder: pure decisions over literals (time passed in).

While memory pressure lasts, one step is taken every `step_interval_s` on the
lowest-priority running tool call that can still escalate (the agent's priority first,
then the call's class): throttle (lower memory.high), then freeze, then kill, in the
policy's step order. Each step needs an event newer than the step before it: a PSI
trigger fires once per window while the stall lasts, and the memory watch reports once per
interval while the growth lasts, so a step that ended the stall or the growth is not
followed by another on the old event's account. A call whose steps were undone shortly
before it is first in line again (the enforcer passes those steps as its `relapse`)
resumes where it stood: a frozen call thawed into the same stall is killed next, not
throttled and frozen again (for a stall, not the memory watch: see next_step). Urgent
pressure (the memory watch saw growth that would use up the memory left within its
horizon) is answered at once and paced by `urgent_interval_s`, the watch's own reporting
interval; it lasts only while the growth goes on, so the faster pace
ends once the growth is stopped. Only when every tool call is at the top of the ladder
may an agent's main cgroup be killed, and only where its class sets `kill_main_allowed`.

Pausing makes room only where the paused call's memory leaves. Tool calls run without
swap (memory.swap.max 0), so a frozen call keeps every page it holds; where the host has
swap the enforcer sends a paused call's memory there (its `offloaded`), and the call that
goes on gets the room. Two rules follow. Among equal calls the ladder works on the one that
started last, and keeps working on it: a call's start does not change while both grow, where
ordering by size flips as the growing call passes the other, and the ladder then paused
both sides of one collision. And no call is frozen while another frozen call still holds
its memory: that freeze would stop both and free nothing; the held call's own next step
(a kill, where the policy has one) makes the room instead, and the kernel's OOM order
(tool calls before agents, low priority first) stands behind it. A paused call whose
memory is in swap has given what it holds: it is not killed for another call's growth.
Once pressure has been gone for `relief_interval_s`, one step is undone per interval,
highest priority first (see _relieve for the order of a call's own steps). A kill is
never undone. When the call
next in that order fits again (the enforcer checks its forecast growth against the memory
the running calls leave, as admission would), its step is undone after `quick_relief_s`
of calm instead: a call paused through another's spike resumes as soon as the spike has
passed, not a fixed interval later, and a call that would not fit still waits the whole
interval. Among calls of that next call's rank, the first that fits goes early (two equal
calls paused in one collision would otherwise wait for each other); never one of a lower rank.

The enforcer turns each Decision into cgroup writes; this module only chooses.
"""

from dataclasses import dataclass, field

THROTTLE, FREEZE, KILL = "throttle", "freeze", "kill"
THAW, RESTORE = "thaw", "restore"
RESUME = "resume"                 # restore, then thaw, in one step (a paused call that fits)


@dataclass
class Candidate:
    """One cgroup the ladder may act on, as the enforcer sees it now."""
    key: str                      # "<agent>/<tool>" or "<agent>/main"
    priority: int                 # tool class priority (main: agent class priority)
    agent_priority: int = 50
    memory: int = 0               # current bytes: of two equals that started together, the bigger first
    applied: tuple = ()           # steps in effect, in order applied (e.g. ("throttle",))
    can: frozenset = frozenset({THROTTLE, FREEZE, KILL})   # steps the kernel offers here
    main: bool = False
    started: float = 0.0          # newer calls go first among equals (less work lost)
    fits: bool = False            # undoing its step now would fit in the memory left
    relapse: tuple = ()           # steps it reached before a relief that did not last
    io_rate: float = 0.0          # bytes/s it moves on disks (read only while I/O is a ladder reason)
    offloaded: bool = False       # paused, and its memory went out to swap (it frees room)


@dataclass(frozen=True)
class Decision:
    action: str                   # throttle | freeze | kill | thaw | restore | resume
    key: str
    reason: str


@dataclass
class Ladder:
    steps: tuple = (THROTTLE, FREEZE, KILL)
    step_interval_s: float = 2.0
    relief_interval_s: float = 5.0
    quick_relief_s: float = 2.0   # calm before undoing a step that fits (see the module doc)
    window_s: float = 2.0         # a PSI event counts as "pressure now" for 1.5 windows
    urgent_interval_s: float = 0.25   # step spacing while urgent (memory-watch) pressure lasts
    last_pressure: float = float("-inf")
    pressure_until: float = float("-inf")
    urgent_until: float = float("-inf")
    last_step: float = float("-inf")
    last_relief: float = float("-inf")
    pressure_reason: str = ""
    pressure_io: bool = False     # the latest pressure is I/O: the busiest call of its scope goes first
    history: list = field(default_factory=list)   # decisions taken (tests, status)

    def pressure(self, now, reason="memory pressure", hold_s=None, urgent=False, io=False):
        """Record a pressure event (a PSI trigger fired, the poller saw a stall, or the
        memory watch saw dangerous growth). It is "pressure now" for `hold_s`: by default a
        window and a half, as a trigger fires at most once per window while the stall
        lasts; the memory watch reports every interval while the growth lasts, so its
        events hold for less. `io`: the pressure is a call's disk traffic that stalls a
        higher-priority agent (iopressure.py); candidates are then ordered by io_rate
        before memory."""
        hold = self.window_s * 1.5 if hold_s is None else hold_s
        self.last_pressure = max(self.last_pressure, now)
        self.pressure_until = max(self.pressure_until, now + hold)
        if urgent:
            self.urgent_until = max(self.urgent_until, now + hold)
        self.pressure_reason = reason
        self.pressure_io = io

    def under_pressure(self, now):
        return now <= self.pressure_until

    def urgent(self, now):
        return now <= self.urgent_until

    def decide(self, now, candidates):
        """At most one Decision for this tick (escalation or relief), or None."""
        if self.under_pressure(now):
            gap = min(self.step_interval_s, self.urgent_interval_s) if self.urgent(now) else self.step_interval_s
            if now - self.last_step < gap:
                return None
            if self.last_pressure <= self.last_step:
                # No event since the last step: that step may have been the answer (a
                # throttled call stops growing, a frozen one stops stalling). The next
                # step waits for new evidence, not for the old event's hold to run out.
                return None
            d = self._escalate(candidates, relapse=not self.urgent(now))
            if d:
                self.last_step = now
                self.history.append(d)
            return d
        calm_since = max(self.last_pressure, self.last_relief, self.last_step)
        if now - calm_since < min(self.relief_interval_s, self.quick_relief_s):
            return None
        early = now - calm_since < self.relief_interval_s
        c, d = self._relieve(candidates, early)
        if d is None:
            return None
        if early and not c.fits:
            return None
        self.last_relief = now
        if early:
            d = Decision(d.action, d.key, d.reason + "; it fits in the memory left")
        self.history.append(d)
        return d

    def next_step(self, c, relapse=True):
        """The next ladder step for candidate `c`, or None at the top. `relapse`: count the
        steps `c` reached before its last relief (a stall came back); not for the memory
        watch's growth, which names the shared memory running out, not this call's doing:
        a call thawed because it fits starts at the bottom again."""
        if KILL in c.applied:
            return None
        if c.main:
            return KILL if KILL in self.steps and KILL in c.can else None
        # A call that brings the pressure back soon after its steps were undone goes on
        # from where it stood: thawed into the same stall, it would only be throttled
        # and frozen again, round after round.
        done = set(c.applied) | (set(c.relapse) if relapse else set())
        for s in self.steps:
            if s in done or s not in c.can:
                continue
            # Steps listed before one already applied are skipped (a frozen call is not
            # throttled afterwards).
            if any(self.steps.index(a) > self.steps.index(s) for a in done if a in self.steps):
                continue
            return s
        return None

    def _escalate(self, candidates, relapse=True):
        order = io_escalation_order if self.pressure_io else escalation_order
        tools = sorted((c for c in candidates if not c.main), key=order)
        held = holds_paused_memory(tools)
        for c in tools:
            if c.offloaded and FREEZE in c.applied:
                # Paused with its memory already in swap: it has given what it holds, and
                # killing it would free nothing more. Another call's growth is answered
                # on that call.
                continue
            s = self.next_step(c, relapse)
            if s == FREEZE and any(h is not c for h in held):
                # Another paused call keeps all it holds: freezing this one too would
                # stop both sides and free nothing. It keeps its throttle; the ladder
                # goes on to the next call (the held one's kill, where there is one).
                continue
            if s:
                return Decision(s, c.key, self.pressure_reason or "memory pressure")
        mains = sorted((c for c in candidates if c.main), key=escalation_order)
        for c in mains:
            s = self.next_step(c)
            if s:
                return Decision(s, c.key, (self.pressure_reason or "memory pressure")
                                + "; every tool call was already at the top of the ladder")
        return None

    def _relieve(self, candidates, early=False):
        """(candidate, Decision) for the next step to undo, or (None, None). A frozen and
        throttled call that fits gets its limit back while still frozen and is thawed in
        the same step (resume): thawed first, it would only stall against the throttled
        limit, and a second step would keep it paused another quiet window. One that does
        not fit is thawed first and keeps the lower limit a while longer.

        `early` (before the whole relief interval, where only a call that fits may go on):
        among calls of the next one's rank (agent, then call priority) the first that fits
        goes, not only the next one. Two equal calls paused together in one collision each
        hold memory the other needs; waiting for the older to fit would keep both paused
        until the whole interval ran out, where the younger, at its peak, can finish and
        free what the older needs. A lower rank still never goes before a higher one."""
        order = [c for c in sorted(candidates, key=relief_order) if KILL not in c.applied and c.applied]
        if early and order and not order[0].fits:
            head = (order[0].agent_priority, order[0].priority)
            order = [c for c in order if (c.agent_priority, c.priority) == head and c.fits] or order
        for c in order:
            if THROTTLE in c.applied and FREEZE in c.applied and c.fits:
                return c, Decision(RESUME, c.key, "pressure gone")
            if THROTTLE in c.applied and FREEZE not in c.applied:
                return c, Decision(RESTORE, c.key, "pressure gone")
            if FREEZE in c.applied:
                return c, Decision(THAW, c.key, "pressure gone")
        return None, None


def escalation_order(c):
    """The lowest-priority agent first (on a shared host a tenant's priority outranks what
    its call is: a high agent's test suite before a low agent's `cat`, as in the kernel OOM
    order of agentd/oom.py and GPU placement); within it the lowest-priority call, then the
    newer (then the bigger).

    The newer, not the bigger: a start time does not move while two calls grow into each
    other, so the call paused first stays first in line and the other goes on; by size the
    order flips when the growing call passes the other and both end up paused. The newer
    also came second into memory the older was already using (admission let the older in
    first), has lost less work if it comes to a kill, and is the last that relief gives
    back (relief_order: the older first). Not the smaller remaining forecast: it is least
    known exactly here (a call forecast at the floor that has passed it says nothing of
    what is still to come)."""
    return (c.agent_priority, c.priority, -c.started, -c.memory, c.key)


def holds_paused_memory(candidates):
    """Frozen calls whose memory stays where it is (not sent to swap, not killed): pausing
    any other call beside them frees nothing."""
    return [c for c in candidates
            if not c.main and FREEZE in c.applied and KILL not in c.applied and not c.offloaded]


def pause_freed(before, after):
    """Did sending a paused call's memory to swap free room? At least half of what it held
    left memory (a kernel that took little, swap nearly full: it still holds its memory)."""
    return before > 0 and after <= before // 2


def offload_bytes(memory, swap_free, step):
    """Bytes to ask the kernel to reclaim from a paused call in one write: what it still
    holds, as far as the host's free swap takes it, at most `step` (0: nothing to send)."""
    return max(0, min(int(memory or 0), int(swap_free or 0), int(step)))


def io_escalation_order(c):
    """Under I/O pressure the call to slow is one keeping the disk busy: calls that move
    data (io_rate > 0) first, then as escalation_order, the busier before the bigger."""
    return (c.io_rate <= 0, c.agent_priority, c.priority, -c.io_rate, -c.memory, -c.started, c.key)


def relief_order(c):
    """Highest priority first (agent, then call); among equals the older call (it has
    waited longest)."""
    return (-c.agent_priority, -c.priority, c.started, c.key)
