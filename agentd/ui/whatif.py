"""`agentd report --what-if`: what a dry-run daemon would have done, per tool call.

A daemon started with `--dry-run` (or AGENTD_DRY_RUN=1) places tool calls made through
`agentd tool` in their cgroups but writes no limit, freeze, kill or oom_score_adj, stops
nothing at exec and holds no call back for memory. Its decisions are in the event log:

  agent_start, tool_start   with `dry_run`: the limits they would have got
  tool_observed             a call automatic detection would have placed (it observes only)
  dry_run                   each other would-be write, old -> new: a re-forecast memory.high,
                            oom_score_adj, a kill of leftover processes, cpu.weight
  action                    with `dry_run`: ladder steps (throttle, freeze, kill, ...) and
                            admission waits (queue)
  tool_end                  how the call really ended, next to what agentd would have done

Building the rows is pure (tested with literals); `text` and `as_json` format them.
"""

import dataclasses

from ..errors import AgentdError
from ..eventlog import read_events
from ..units import format_size

LADDER = ("throttle", "restore", "freeze", "thaw", "kill", "resume")


@dataclasses.dataclass
class AgentWhatIf:
    agent: str
    agent_class: str = "?"
    limits: dict = dataclasses.field(default_factory=dict)
    oom_score_adj: int | None = None
    actions: list = dataclasses.field(default_factory=list)   # kill_main, kills of leftovers


@dataclasses.dataclass
class CallWhatIf:
    agent: str
    tool: str
    argv: list = dataclasses.field(default_factory=list)
    tool_class: str = "?"
    rule: str | None = None
    origin: str | None = None
    observed: bool = False            # detected automatically; a dry run does not place it
    start: float | None = None
    limits: dict = dataclasses.field(default_factory=dict)      # file -> value it would have had
    oom_score_adj: int | None = None
    forecast: int | None = None
    actions: list = dataclasses.field(default_factory=list)     # {"ts", "action", "old", "new", "reason"}
    waits: list = dataclasses.field(default_factory=list)       # admission: {"ts", "forecast_bytes", ...}
    outcome: str | None = None
    peak: int | None = None

    def to_json(self):
        return dataclasses.asdict(self)


def what_if(events, agent=None):
    """(agents, calls): what a dry run would have done, from event records in log order.
    Only dry-run records count; the rest of a call's story (its end) fills in around them."""
    agents, calls = {}, {}

    def call(rec):
        key = (rec.get("agent"), rec.get("tool"))
        if key not in calls:
            calls[key] = CallWhatIf(agent=key[0], tool=key[1])
        return calls[key]

    for rec in events:
        if agent and rec.get("agent") != agent:
            continue
        kind, dry, ts = rec.get("event"), bool(rec.get("dry_run")), rec.get("ts")
        if kind == "agent_start" and dry:
            agents[rec["agent"]] = AgentWhatIf(rec["agent"], rec.get("agent_class", "?"), dict(rec.get("limits") or {}))
        elif kind in ("tool_start", "tool_observed") and dry and rec.get("tool"):
            c = call(rec)
            c.argv, c.tool_class, c.rule = rec.get("argv") or [], rec.get("tool_class", "?"), rec.get("rule")
            c.origin, c.start, c.observed = rec.get("origin"), ts, kind == "tool_observed"
            c.limits.update(rec.get("limits") or {})
            if kind == "tool_observed":
                c.oom_score_adj, c.forecast = rec.get("oom_score_adj"), rec.get("forecast_bytes")
        elif kind == "dry_run":
            _would(rec, agents, calls, call)
        elif kind == "action" and dry and rec.get("tool") and rec.get("action") in LADDER:
            call(rec).actions.append({"ts": ts, "action": rec["action"], "old": rec.get("old"),
                                      "new": rec.get("new"), "reason": rec.get("reason")})
        elif kind == "action" and dry and rec.get("action") == "kill_main" and rec.get("agent") in agents:
            agents[rec["agent"]].actions.append({"ts": ts, "action": "kill_main", "reason": rec.get("reason")})
        elif kind == "tool_end" and (rec.get("agent"), rec.get("tool")) in calls:
            c = calls[(rec["agent"], rec["tool"])]
            c.outcome, c.peak, c.forecast = rec.get("outcome"), rec.get("memory_peak_bytes"), rec.get("forecast_bytes")
            c.waits += [{k: a.get(k) for k in ("ts", "seconds", "forecast_bytes", "reason")}
                        for a in rec.get("actions") or () if a.get("action") == "queue" and a.get("dry_run")]
    ordered = sorted(calls.values(), key=lambda c: c.start or 0)
    return agents, ordered


def _would(rec, agents, calls, call):
    """A `dry_run` record: a would-be write outside the ladder."""
    changes = rec.get("changes") or {}
    tool = rec.get("tool")
    if tool:
        c = call(rec)
        for name, (old, new) in changes.items():
            if name == "oom_score_adj":
                c.oom_score_adj = new
            elif c.start is not None and name in c.limits and c.limits[name] != new:
                c.actions.append({"ts": rec.get("ts"), "action": f"set {name}", "old": old, "new": new,
                                  "reason": rec.get("reason")})
                c.limits[name] = new
            else:
                c.limits[name] = new
        if rec.get("what") == "kill":
            c.actions.append({"ts": rec.get("ts"), "action": "kill", "old": "running", "new": "killed",
                              "reason": rec.get("reason")})
        elif rec.get("what") != "set":          # e.g. hide the GPUs (device program)
            c.actions.append({"ts": rec.get("ts"), "action": rec.get("what"), "old": None, "new": None,
                              "reason": rec.get("reason")})
        return
    a = agents.get(rec.get("agent"))
    if a is None:
        return
    if "oom_score_adj" in changes:
        a.oom_score_adj = changes["oom_score_adj"][1]
    for name, (_, new) in changes.items():
        if name != "oom_score_adj":
            a.limits[name] = new
    if rec.get("what") == "kill":
        a.actions.append({"ts": rec.get("ts"), "action": "kill leftovers", "reason": rec.get("reason")})


def load(path, agent=None):
    agents, calls = what_if(read_events(path), agent)
    if not agents and not calls:
        who = f" of agent {agent!r}" if agent else ""
        raise AgentdError(f"no dry-run decisions{who} in the event log {path}: start the daemon with "
                          f"`agentd daemon --dry-run` (or AGENTD_DRY_RUN=1) and run the agents under it")
    return agents, calls


def as_json(agents, calls):
    return {"dry_run": True, "agents": [dataclasses.asdict(a) for a in agents.values()],
            "tool_calls": [c.to_json() for c in calls]}


def _v(name, value):
    if name.startswith("memory.") and value not in (None, "max"):
        try:
            return format_size(int(value))
        except (TypeError, ValueError):
            return str(value)
    return str(value).replace("\n", "; ")      # io.max: a line per disk


def _limits(limits):
    return ", ".join(f"{k} {_v(k, v)}" for k, v in sorted(limits.items())) or "nothing"


def text(agents, calls):
    """Lines for a terminal: per agent, then per tool call, what agentd would have done."""
    steps = sum(len(c.actions) for c in calls)
    waits = sum(len(c.waits) for c in calls)
    out = [f"What agentd would have done (dry run): {len(calls)} tool calls of {len(agents) or '?'} agents, "
           f"{steps} enforcement steps, {waits} admission waits"]
    t0 = min((c.start for c in calls if c.start), default=None)
    for a in agents.values():
        adj = f"; oom_score_adj {a.oom_score_adj} on its own processes" if a.oom_score_adj is not None else ""
        out.append(f"agent {a.agent} (class {a.agent_class}): would set {_limits(a.limits)}{adj}")
        for act in a.actions:
            out.append(f"  would {act['action']} ({act['reason']})")
    for c in calls:
        prog = " ".join(" ".join(c.argv).split())[:60] or "?"
        how = "detected automatically, observed only" if c.observed else (c.origin or "agentd tool")
        end = f"; ended {c.outcome}" if c.outcome else ""
        peak = f", peak {format_size(c.peak)}" if c.peak else ""
        fc = f", forecast {format_size(c.forecast)}" if c.forecast else ""
        out.append(f"{c.agent}/{c.tool}  {prog}  [{how}, class {c.tool_class}{f', rule {c.rule}' if c.rule else ''}]"
                   f"{end}{peak}{fc}")
        adj = f"; oom_score_adj {c.oom_score_adj}" if c.oom_score_adj is not None else ""
        out.append(f"    would set: {_limits(c.limits)}{adj}")
        for w in c.waits:
            out.append(f"    would wait for memory: forecast {format_size(w.get('forecast_bytes') or 0)} "
                       f"past the budget ({w.get('reason')})")
        for act in c.actions:
            at = f" at +{act['ts'] - t0:.1f} s" if t0 and act.get("ts") else ""
            change = (f" {_v('memory.high', act['old'])} -> {_v('memory.high', act['new'])}"
                      if act["action"] in ("throttle", "restore") or act["action"].startswith("set ") else "")
            out.append(f"    would {act['action']}{change}{at} ({act['reason']})")
    return out
