"""Decisions -> kernel writes: the one place agentd changes a limit, a freeze, a kill or
an oom_score_adj (the controller's class limits, the enforcer's ladder, the CPU stage's
weights all come here).

Every ladder write is logged old -> new with its reason, recorded in the tool call's
`actions`, emitted as an `action` event and, when the call's `agentd tool` is still
connected, told to the agent as a one-sentence notice: through `tell(key, kind, text)`,
the API's outbox (api/outbox.py); nothing here writes to a client.

With `dry_run` nothing is written. Each decision is still logged ("would set ... [dry
run]") and emitted: ladder actions as `action` events marked `dry_run`, everything else
(class limits, forecast memory.high, oom_score_adj, straggler kills, CPU weights) as
`dry_run` events naming the agent, the tool call, old -> new and the reason. The values
agentd would have written are kept in `shadow`, so the next decision starts from them
(a re-forecast that moves memory.high again logs its move from the would-be value, not
from "max" every tick), and `agentd report --what-if` reads them back from the log.
"""

import logging
import time

from ..errors import AgentdError, CgroupGone, KernelError
from ..api.feedback import advice_for
from ..policy.match import program_of as _program
from ..kernel import cgroupfs as cgf
from ..kernel import swap as ksw
from ..units import format_size

log = logging.getLogger("agentd.enforce")


def _size(v):
    return v if v in (None, "max") else format_size(int(v))


def _same(old, new):
    """Does a file that reads `old` already hold `new`? A keyed file (io.max: a line per
    device) lists its lines in the kernel's order, not in the order they were written."""
    if "\n" not in old and "\n" not in new:
        return old == new
    return sorted(old.splitlines()) == sorted(new.splitlines())


UNREAD = object()            # set_high: the caller has not read memory.high


class Actuator:
    def __init__(self, fs, events, dry_run=False, procfs=None, tell=None):
        self.fs = fs
        self.outbox = tell or (lambda key, kind, message: None)
        self.events = events
        self.dry_run = dry_run
        self.procfs = procfs
        self.counts = {}          # action -> count (metrics)
        self.shadow = {}          # dry run: (cgroup, file) -> the value agentd would have written
        # cgroup -> the swap limits swap_out raised there, until swap_back puts them back:
        # every thaw through the actuator (the ladder's, agentd's stop, the API's) puts them
        # back first, so no call runs on with the swap its pause was given.
        self.raised_swap = {}

    # --- reads that see the would-be values of a dry run --------------------------
    def read(self, cg, name):
        """A limit file's value as agentd left it: the would-be value in a dry run."""
        if self.dry_run and (cg, name) in self.shadow:
            return self.shadow[(cg, name)]
        return self.fs.read(cg, name).strip()

    def read_int(self, cg, name):
        """An integer limit file ('max' = None), as `read`."""
        return cgf.parse_int(self.read(cg, name))

    def read_high(self, cg):
        """memory.high in bytes (None = "max"); None also where the file does not exist."""
        return self.high_of(cg)[1]

    def high_of(self, cg):
        """(offered, bytes) of `cg`'s memory.high in one read: offered is False where the
        kernel has no such file (or the cgroup is gone), bytes None for "max". The
        enforcer's tick reads each running call's limit this way, once, and hands it to
        set_high: a stat, a second read and a stat again per call per tick are a
        noticeable share of the daemon's CPU in an emulated guest."""
        try:
            if self.dry_run and (cg, cgf.MEMORY_HIGH) in self.shadow:
                text = self.shadow[(cg, cgf.MEMORY_HIGH)]
            else:
                text = self.fs.read_if_offered(cg, cgf.MEMORY_HIGH)
            if text is None:
                return False, None
            return True, cgf.parse_int(text.strip())
        except (CgroupGone, KernelError, ValueError):
            return False, None

    def forget(self, cg):
        """`cg` was removed: its would-be values and its raised swap limits go with it."""
        self.raised_swap.pop(cg, None)
        if self.shadow:
            for key in [k for k in self.shadow if k[0] == cg]:
                del self.shadow[key]

    def _would(self, what, who, reason, agent=None, tool=None, **fields):
        """One dry-run decision: a log line and a `dry_run` event."""
        detail = ", ".join(f"{k} {_size(v[0]) if k.startswith('memory.') else v[0]} -> "
                           f"{_size(v[1]) if k.startswith('memory.') else v[1]}"
                           for k, v in (fields.get("changes") or {}).items())
        log.info("%s: would %s%s (%s) [dry run]", who, what, f" {detail}" if detail else "", reason)
        self.events.emit("dry_run", agent=agent, tool=tool, what=what, reason=reason, **fields)

    def decided_only(self, what, who, reason, agent=None, tool=None, **fields):
        """For a write made elsewhere (a BPF attachment): in a dry run, record the decision
        and return True (the caller then writes nothing); else False."""
        if not self.dry_run:
            return False
        self._would(what, who, reason, agent, tool, **fields)
        return True

    # --- limits ------------------------------------------------------------------
    def set_high(self, who, cg, new, reason, agent=None, tool=None, current=UNREAD):
        """Write memory.high; returns (old, new) or None when nothing was written. A dry
        run emits the decision when `tool` is named (the ladder's own emit their action).
        `current`: the value (bytes, None for "max") the caller just read with high_of,
        where it offered the file; the file is then not looked up and read again."""
        if current is UNREAD:
            if not self.fs.has(cg, cgf.MEMORY_HIGH):
                return None
            old = self.read(cg, cgf.MEMORY_HIGH)
        else:
            old = "max" if current is None else str(int(current))
        val = "max" if new is None else str(int(new))
        if old == val:
            return None
        if self.dry_run:
            self.shadow[(cg, cgf.MEMORY_HIGH)] = val
            if tool is not None:
                self._would("set", who, reason, agent, tool, changes={cgf.MEMORY_HIGH: [old, val]})
            else:
                log.info("%s: would set memory.high %s -> %s (%s) [dry run]", who, _size(old), _size(val), reason)
            return old, val
        self.fs.write(cg, cgf.MEMORY_HIGH, val)
        log.info("%s: memory.high %s -> %s (%s)", who, _size(old), _size(val), reason)
        return old, val

    def set_limits(self, who, cg, limits, reason, fresh=False, agent=None, tool=None):
        """Write limit files (memory.*, cpu.*, pids.max, ...); skip files the kernel does
        not offer here; log old -> new. Returns {file: value} of what is (or, in a dry
        run, would be) in effect.

        `fresh`: `cg` was just made, so every file holds the kernel's default: each limit
        is one write (no stat, no read back) and the call gets one log line, not one per
        file; a limit that is the kernel's default (cgf.FRESH_DEFAULTS: a class's
        memory.min 0, cpu.weight 100, ...) is not written at all where a write of another
        file of its controller showed the kernel offers that controller here. This is the
        per-tool-call path; in an emulated guest every cgroupfs syscall costs a fraction of
        a millisecond and a log line about a millisecond."""
        wanted = {k: ("max" if v == "max" else str(v)) for k, v in limits.items() if v is not None}
        if self.dry_run:
            return self._would_limits(who, cg, wanted, reason, agent, tool)
        applied = {}
        if fresh:
            done, offered = {}, {}        # file -> written; controller -> offered here
            defaults = [n for n, v in wanted.items() if cgf.FRESH_DEFAULTS.get(n) == v]
            for name in [n for n in wanted if n not in defaults] + defaults:
                ctl = cgf.controller_of(name)
                if name in defaults and offered.get(ctl):
                    done[name] = True     # already the kernel's value: nothing to write
                    continue
                try:
                    done[name] = self.fs.write_if_offered(cg, name, wanted[name])
                    offered[ctl] = offered.get(ctl) or done[name]
                except CgroupGone:
                    raise
                except KernelError as err:
                    log.warning("%s: cannot set %s=%s: %s", who, name, wanted[name], err)
            applied = {n: v for n, v in wanted.items() if done.get(n)}
            if applied:
                log.info("%s: %s (%s)", who, ", ".join(f"{k}={v}" for k, v in applied.items()), reason)
            return applied
        for name, new in wanted.items():
            if not self.fs.has(cg, name):
                continue
            try:
                old = self.fs.read(cg, name).strip()
                if not _same(old, new):
                    self.fs.write(cg, name, new)
                    log.info("%s: %s %s -> %s (%s)", who, name, old, new, reason)
                applied[name] = new
            except CgroupGone:
                raise
            except KernelError as err:
                log.warning("%s: cannot set %s=%s: %s", who, name, new, err)
        return applied

    def _would_limits(self, who, cg, wanted, reason, agent, tool):
        applied, changes = {}, {}
        for name, new in wanted.items():
            if not self.fs.has(cg, name):
                continue          # CgroupGone when the cgroup itself is gone, as a write would
            old = self.read(cg, name)
            applied[name] = new
            if not _same(old, new):
                changes[name] = [old, new]
                self.shadow[(cg, name)] = new
        if changes:
            self._would("set", who, reason, agent, tool, changes=changes)
        return applied

    def reclaim(self, who, cg, nbytes, reason):
        """Have the kernel reclaim `nbytes` from `cg` (memory.reclaim; agentd/reclaim/).
        Returns (memory.current before, after, whether the kernel took all it was asked);
        in a dry run nothing is written and after == before. Logged at debug level: an idle
        agent is reclaimed in small steps, and its stage logs one line per idle spell."""
        before = self.fs.read_int(cg, cgf.MEMORY_CURRENT) or 0
        if self.dry_run:
            log.debug("%s: would reclaim %s (%s) [dry run]", who, format_size(int(nbytes)), reason)
            self.counts["reclaim"] = self.counts.get("reclaim", 0) + 1
            return before, before, True
        full, after = self._reclaim_now(cg, nbytes)
        log.debug("%s: memory.reclaim %s: memory.current %s -> %s (%s)", who, format_size(int(nbytes)),
                  format_size(before), format_size(after), reason)
        self.counts["reclaim"] = self.counts.get("reclaim", 0) + 1
        return before, after, full

    def _reclaim_now(self, cg, nbytes):
        """memory.reclaim of `nbytes` from `cg`: (whether the kernel took it all, memory.current after)."""
        full = self.fs.reclaim(cg, nbytes)
        return full, self.fs.read_int(cg, cgf.MEMORY_CURRENT) or 0

    # --- a paused call's memory to swap and back ----------------------------------
    SWAP_FILES = (ksw.MEMORY_SWAP_MAX, ksw.MEMORY_ZSWAP_MAX)

    def swap_out(self, who, cg, nbytes, reason, agent=None, tool=None):
        """Send a paused (frozen) call's memory to swap: its memory.swap.max (and
        memory.zswap.max, where offered) raised to max, then memory.reclaim of `nbytes`.
        Returns (saved, before, after, swapped): `saved` the files' values before, which
        swap_back puts back; memory.current before and after; memory.swap.current after.
        None where `cg` offers no memory.swap.max (nothing written). In a dry run nothing is
        written: the decision is logged and emitted, and after == before. CgroupGone when
        the cgroup went away."""
        if not self.fs.has(cg, ksw.MEMORY_SWAP_MAX):
            return None
        saved = {n: self.read(cg, n) for n in self.SWAP_FILES if self.fs.has(cg, n)}
        before = self.fs.read_int(cg, cgf.MEMORY_CURRENT) or 0
        if self.dry_run:
            self._would("send to swap", who, reason, agent, tool,
                        changes={n: [v, "max"] for n, v in saved.items() if v != "max"},
                        reclaim_bytes=int(nbytes))
            return saved, before, before, 0
        for name, old in saved.items():
            if old != "max":
                self.fs.write(cg, name, "max")
        self.raised_swap.setdefault(cg, saved)
        full, after = self._reclaim_now(cg, nbytes)
        swapped = self.fs.read_int(cg, ksw.MEMORY_SWAP_CURRENT) if self.fs.has(cg, ksw.MEMORY_SWAP_CURRENT) else 0
        log.info("%s: paused, its memory to swap: memory.swap.max %s -> max, memory.reclaim %s%s: "
                 "memory.current %s -> %s, in swap %s (%s)", who, saved.get(ksw.MEMORY_SWAP_MAX),
                 format_size(int(nbytes)), "" if full else " (the kernel took less)", format_size(before),
                 format_size(after), format_size(swapped or 0), reason)
        self.counts["swap_out"] = self.counts.get("swap_out", 0) + 1
        self.events.emit("swap_out", agent=agent, tool=tool, reason=reason, memory_before=before,
                         memory_after=after, swap_bytes=swapped)
        return saved, before, after, swapped

    def swap_back(self, who, cg, saved, reason, agent=None, tool=None):
        """Put back the swap limits swap_out raised (`saved`: file -> value). The pages
        already in swap stay there and fault back in as the call touches them; the limit
        only stops more from going. Nothing written in a dry run (nothing was raised), nor
        where they were put back already (a thaw through the API came first)."""
        changed = {n: v for n, v in (saved or {}).items() if v != "max"}
        if not changed:
            return
        if not self.dry_run and self.raised_swap.pop(cg, None) is None:
            return
        if self.dry_run:
            self._would("set", who, reason, agent, tool, changes={n: ["max", v] for n, v in changed.items()})
            return
        for name, value in changed.items():
            self.fs.write(cg, name, value)
        log.info("%s: %s back to %s (%s)", who, ", ".join(changed), ", ".join(changed.values()), reason)
        self.events.emit("swap_back", agent=agent, tool=tool, reason=reason, limits=changed)

    def _swap_back_before_thaw(self, who, tool, reason):
        """Every thaw (the ladder's, agentd's stop, the API's) runs the call on under its
        class's swap limits, not the ones its pause raised."""
        saved = self.raised_swap.get(tool.cgroup)
        if saved is not None:
            self.swap_back(who, tool.cgroup, saved, f"resumed: {reason}", agent=tool.agent_id, tool=tool.tool_id)

    def set_oom(self, pid, value, who, agent=None, tool=None):
        """/proc/<pid>/oom_score_adj (agentd/oom.py); ProcessGone / KernelError as the write."""
        if self.dry_run:
            try:
                old = self.procfs.oom_score_adj(pid) if pid and self.procfs else None
            except (AgentdError, OSError, ValueError):
                old = None
            if old != value:
                self._would("set", who, f"OOM order, pid {pid}", agent, tool, pid=pid,
                            changes={"oom_score_adj": [old, value]})
            return
        self.procfs.set_oom_score_adj(pid, value)

    def kill_cgroup(self, who, cg, reason, agent=None, tool=None):
        """Kill what is left in `cg` (stragglers, an ended agent's leftovers): False in a
        dry run, where they are left running and the decision is logged."""
        if self.dry_run:
            self._would("kill", who, reason, agent, tool, cgroup=cg)
            return False
        self.fs.kill(cg)
        return True

    # --- ladder actions on a tool call ----------------------------------------
    def act(self, tool, action, reason, new_high=None, trigger_ts=None):
        """Carry out one ladder action on `tool`; returns the action record, or None when
        the cgroup is gone or the write changed nothing."""
        who = f"tool {tool.key}"
        now = time.time()
        rec = {"action": action, "reason": reason, "ts": round(now, 3)}
        try:
            if action in ("throttle", "restore"):
                res = self.set_high(who, tool.cgroup, new_high, f"{action}: {reason}")
                if res is None:
                    return None
                rec["old"], rec["new"] = res
            elif action in ("freeze", "thaw"):
                frozen = action == "freeze"
                rec["old"], rec["new"] = int(not frozen), int(frozen)
                if self.dry_run:
                    log.info("%s: would set cgroup.freeze %d -> %d (%s) [dry run]", who, *(rec["old"], rec["new"]),
                             reason)
                else:
                    if not frozen:
                        self._swap_back_before_thaw(who, tool, reason)
                    self.fs.freeze(tool.cgroup, frozen)
                    log.info("%s: cgroup.freeze %d -> %d (%s)", who, rec["old"], rec["new"], reason)
                    tool.run.frozen = frozen
                if not frozen:
                    # The freeze record learns how long the call was paused (feedback).
                    for a in reversed(tool.actions):
                        if a.get("action") == "freeze" and "seconds" not in a:
                            a["seconds"] = round(now - a["ts"], 3)
                            rec["seconds"] = a["seconds"]
                            break
            elif action == "kill":
                rec["old"], rec["new"] = "running", "killed"
                # Recorded before the write: the launcher may report the end at once, and
                # the outcome must read "killed" then.
                tool.run.actions.append(rec)
                if self.dry_run:
                    tool.run.actions.pop()
                    log.info("%s: would kill (cgroup.kill) (%s) [dry run]", who, reason)
                else:
                    if tool.frozen:
                        self.fs.freeze(tool.cgroup, False)   # a frozen task dies only once thawed
                        tool.run.frozen = False
                    self.fs.kill(tool.cgroup)
                    log.warning("%s: killed (cgroup.kill) (%s)", who, reason)
            else:
                raise ValueError(f"unknown action {action!r}")
        except CgroupGone:
            if action == "kill" and tool.actions and tool.actions[-1] is rec:
                tool.run.actions.pop()
            return None
        if trigger_ts is not None:
            rec["after_trigger_s"] = round(now - trigger_ts, 4)
        if self.dry_run:
            rec["dry_run"] = True
        if action != "kill":
            tool.run.actions.append(rec)
        self.counts[action] = self.counts.get(action, 0) + 1
        self.events.emit("action", agent=tool.agent_id, tool=tool.tool_id, action=action, reason=reason,
                         old=rec.get("old"), new=rec.get("new"), after_trigger_s=rec.get("after_trigger_s"),
                         dry_run=self.dry_run or None)
        self.tell(tool, action, notice_text(tool, rec))
        return rec

    def kill_main(self, agent, reason):
        """Kill an agent's main cgroup (only where its class allows it; the caller checks)."""
        who = f"agent {agent.agent_id}"
        if self.dry_run:
            log.info("%s: would kill its main cgroup (%s) [dry run]", who, reason)
        else:
            try:
                self.fs.kill(agent.main_cgroup)
            except CgroupGone:
                return None
            log.warning("%s: main cgroup killed (%s; kill_main_allowed)", who, reason)
        self.counts["kill_main"] = self.counts.get("kill_main", 0) + 1
        self.events.emit("action", agent=agent.agent_id, tool=None, action="kill_main", reason=reason,
                         old="running", new="killed", dry_run=self.dry_run or None)
        return {"action": "kill_main", "reason": reason}

    def record(self, tool, rec):
        """Add `rec` to the call's record of actions (its ToolRun, which the actuator keeps
        for the controller): a stage's own action record, the feedback reads it."""
        tool.run.actions.append(rec)

    def tell(self, tool, kind, message):
        if not message or self.dry_run:
            return                # a dry run changes nothing the agent sees, its messages included
        self.outbox(tool.key, kind, message)

    def notify(self, tool, kind, message):
        """A notice that is not about a write (a warning before one): sent in a dry run too."""
        self.outbox(tool.key, kind, message)

    # --- actions a client asked for, and the controller's own --------------------------
    def requested(self, tool, action, reason="api"):
        """freeze / thaw / kill of `tool` asked for through the API: written as asked, one
        `action` event; nothing is told to the agent (it asked)."""
        who = f"tool {tool.key}"
        if self.dry_run:
            self._would(action, who, reason, tool.agent_id, tool.tool_id, cgroup=tool.cgroup)
            return None
        if action == "kill":
            tool.run.actions.append({"action": "kill", "reason": reason, "ts": time.time()})
            self.fs.kill(tool.cgroup)
        elif action in ("freeze", "thaw"):
            if action == "thaw":
                self._swap_back_before_thaw(who, tool, reason)
            self.fs.freeze(tool.cgroup, action == "freeze")
            tool.run.frozen = action == "freeze"
        else:
            raise ValueError(f"unknown action {action!r}")
        self.events.emit("action", agent=tool.agent_id, tool=tool.tool_id, action=action, reason=reason)
        return {"action": action, "reason": reason}

    def thaw_cgroup(self, cg):
        """Thaw `cg` before its stragglers are killed (a frozen task dies only once thawed);
        nothing to do in a dry run, which never froze it."""
        if not self.dry_run:
            self.fs.freeze(cg, False)


def notice_text(tool, rec):
    """The sentence pushed to the agent while its call runs."""
    prog = _program(tool.argv)
    a = rec["action"]
    if a == "throttle":
        return (f"[agentd] {prog} is being slowed down: {rec['reason']}, so its memory.high went from "
                f"{_size(rec['old'])} to {_size(rec['new'])}; {advice_for(tool.argv)}")
    if a == "restore":
        return f"[agentd] {prog} is no longer slowed down: memory.high is back to {_size(rec['new'])}"
    if a == "freeze":
        return f"[agentd] {prog} is paused: {rec['reason']}; it resumes when memory frees up"
    if a == "thaw":
        return f"[agentd] {prog} resumed after {rec.get('seconds', 0):.1f} s paused"
    if a == "kill":
        return (f"[agentd] {prog} is being killed by agentd: memory pressure lasted after slowing and "
                f"pausing it; {advice_for(tool.argv)}")
    return None
