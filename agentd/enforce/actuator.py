"""Decisions -> cgroup writes. The only place in enforce/ that changes the kernel.

Every write is logged old -> new with its reason, recorded in the tool call's `actions`,
emitted as an `action` event and, when the call's `agentd tool` is still connected, told
to the agent as a one-sentence notice. With `dry_run` nothing is written and the log
says what would have been.
"""

import logging
import time

from ..api import protocol
from ..errors import CgroupGone, KernelError
from ..feedback import _program, advice_for
from ..kernel import cgroupfs as cgf
from ..units import format_size

log = logging.getLogger("agentd.enforce")


def _size(v):
    return v if v in (None, "max") else format_size(int(v))


class Actuator:
    def __init__(self, fs, events, dry_run=False):
        self.fs = fs
        self.events = events
        self.dry_run = dry_run
        self.counts = {}          # action -> count (metrics)

    # --- primitive writes ------------------------------------------------------
    def read_high(self, cg):
        """memory.high in bytes (None = "max"); None also where the file does not exist."""
        try:
            if not self.fs.has(cg, cgf.MEMORY_HIGH):
                return None
            return self.fs.read_int(cg, cgf.MEMORY_HIGH)
        except (CgroupGone, KernelError, ValueError):
            return None

    def set_high(self, who, cg, new, reason):
        """Write memory.high; returns (old, new) or None when nothing was written."""
        if not self.fs.has(cg, cgf.MEMORY_HIGH):
            return None
        old = self.fs.read(cg, cgf.MEMORY_HIGH).strip()
        val = "max" if new is None else str(int(new))
        if old == val:
            return None
        if self.dry_run:
            log.info("%s: would set memory.high %s -> %s (%s) [dry run]", who, _size(old), _size(val), reason)
            return old, val
        self.fs.write(cg, cgf.MEMORY_HIGH, val)
        log.info("%s: memory.high %s -> %s (%s)", who, _size(old), _size(val), reason)
        return old, val

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
                    self.fs.freeze(tool.cgroup, frozen)
                    log.info("%s: cgroup.freeze %d -> %d (%s)", who, rec["old"], rec["new"], reason)
                    tool.frozen = frozen
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
                tool.actions.append(rec)
                if self.dry_run:
                    tool.actions.pop()
                    log.info("%s: would kill (cgroup.kill) (%s) [dry run]", who, reason)
                else:
                    if tool.frozen:
                        self.fs.freeze(tool.cgroup, False)   # a frozen task dies only once thawed
                        tool.frozen = False
                    self.fs.kill(tool.cgroup)
                    log.warning("%s: killed (cgroup.kill) (%s)", who, reason)
            else:
                raise ValueError(f"unknown action {action!r}")
        except CgroupGone:
            if action == "kill" and tool.actions and tool.actions[-1] is rec:
                tool.actions.pop()
            return None
        if trigger_ts is not None:
            rec["after_trigger_s"] = round(now - trigger_ts, 4)
        if self.dry_run:
            rec["dry_run"] = True
        if action != "kill":
            tool.actions.append(rec)
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

    def tell(self, tool, kind, message):
        conn = getattr(tool, "conn", None)
        if conn is None or not message:
            return
        try:
            conn.send(protocol.notice(kind, message))
        except Exception as err:       # a vanished client must not stop enforcement
            log.debug("notice to %s failed: %s", tool.key, err)


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
