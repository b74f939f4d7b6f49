"""An agent's own policy under the daemon's (`agentd run --policy P` against a running daemon).

The daemon's policy is the host's. An agent may bring a policy that describes itself and its
tool calls, within what the daemon's allows:
- each class it writes (agent_classes, tool_classes) must be one the daemon's policy defines,
  and each key it writes only as tight or tighter: lower priority, lower limits, less
  protection (memory.min/low), a later latency class, killing stragglers rather than waiting,
  a shorter grace. Keys the CPU, GPU and enforcement stages read from the daemon's policy
  (kill_main_allowed, forecast, device, gpu) must stay equal. Keys it does not write are the
  daemon's class's.
- its tool_rules and defaults replace the daemon's for this agent; a rule's memory/cpu/pids
  overrides may not exceed what the daemon's policy gives that class (the class, or one of
  its own rules for that class).
- the host-wide sections (daemon, detection, forecast, pressure, admission, cpu) are the
  daemon's: a policy that writes them differently is refused, not silently ignored.
Every problem is reported at once as FILE:LINE; nothing applies unless all pass. Pure: the
caller reads the file (with the caller's own permissions) and passes its text.
"""

import math

from pydantic import BaseModel

from ..errors import PolicyError
from ..units import format_size
from .loader import IO_MAX_KEYS, Problem, _fmt_path, load_policy_text
from .resources import CpuLimits, IoLimits, MemoryLimits, PidsLimits, ToolMemoryLimits
from .schema import AgentClass, LATENCY_CLASSES, ToolClass
from .yamlsrc import load_located

HOST_WIDE = ("daemon", "detection", "forecast", "pressure", "admission", "cpu", "io")

# How a written key may differ from the daemon's: "le" no larger (None = unlimited, the
# largest), ("order", words) no earlier in `words`, "eq" equal, "free" anything.
LE, EQ, FREE = "le", "eq", "free"
RULES = {
    MemoryLimits: {"min": LE, "low": LE, "high": LE, "max": LE},
    ToolMemoryLimits: {"min": LE, "low": LE, "high": LE, "max": LE, "swap_max": LE},
    CpuLimits: {"weight": LE, "max": LE},
    PidsLimits: {"max": LE},
    IoLimits: {"weight": LE, "rbps": LE, "wbps": LE, "riops": LE, "wiops": LE},
    AgentClass: {"name": FREE, "description": FREE, "priority": LE, "kill_main_allowed": EQ, "gpu": EQ},
    ToolClass: {"name": FREE, "description": FREE, "priority": LE, "latency": ("order", LATENCY_CLASSES),
                "stragglers": ("order", ("wait", "kill")), "straggler_grace_s": LE, "forecast": EQ,
                "device": EQ, "gpu": EQ},
}
SIZES = {"memory"}
IO_WEIGHT_DEFAULT = 100           # io.weight of a cgroup nobody wrote
# Blocks compared (and merged) key by key.
LIMIT_BLOCKS = (MemoryLimits, CpuLimits, PidsLimits, IoLimits)


def _num(v):
    return math.inf if v is None else v


def _show(v, size):
    if v is None:
        return "unlimited"
    if size:
        return format_size(v)
    if isinstance(v, BaseModel):
        return str(v.model_dump())
    return repr(v)


class _Check:
    def __init__(self, daemon, mine, source, doc):
        self.daemon, self.mine, self.source, self.doc = daemon, mine, source, doc
        self.problems = []

    def problem(self, path, message):
        self.problems.append(Problem(self.source, self.doc.line_of(path), _fmt_path(path), message))

    def model(self, path, base, over, what, size=False):
        """Compare the keys `over` wrote with `base`, recursing into limit blocks."""
        rules = RULES[type(over)]
        for key in sorted(over.model_fields_set):
            rule = rules.get(key)
            mine, theirs = getattr(over, key), getattr(base, key)
            if isinstance(over, IoLimits) and key == "weight" and theirs is None:
                theirs = IO_WEIGHT_DEFAULT    # unset is the kernel's weight, not unlimited
            if isinstance(mine, LIMIT_BLOCKS):
                self.model(path + (key,), theirs, mine, what, size=key in SIZES)
                continue
            if isinstance(over, IoLimits) and (isinstance(mine, dict) or isinstance(theirs, dict)):
                self.per_disk(path + (key,), over, base, key, what)
                continue
            if rule == FREE or rule is None and mine == theirs:
                continue
            is_size = size and key != "weight"
            if rule == LE:
                ok = _num(mine) <= _num(theirs)
                how = "is above"
            elif isinstance(rule, tuple):
                words = rule[1]
                ok = words.index(mine) >= words.index(theirs)
                how = "comes before"
            else:
                ok = mine == theirs
                how = "differs from"
            if not ok:
                self.problem(path + (key,), f"{_show(mine, is_size)} {how} the daemon's {_show(theirs, is_size)} "
                                            f"for {what}: an agent's policy may only tighten the daemon's "
                                            f"({self.daemon.source})" + (
                                                "" if rule != EQ else "; leave it out to use the daemon's"))

    def undefined(self, path, kind, name, section):
        self.problem(path, f"{kind} class {name!r} is not defined by the running daemon's policy "
                           f"{self.daemon.source} (defined: {', '.join(sorted(getattr(self.daemon, section)))}); "
                           "an agent's policy may only tighten the daemon's classes")

    def defaults(self):
        if "defaults" not in self.mine.model_fields_set:
            return
        d = self.mine.defaults
        for key, kind, section in (("agent_class", "agent", "agent_classes"), ("tool_class", "tool", "tool_classes")):
            if key in d.model_fields_set and getattr(d, key) not in getattr(self.daemon, section) and \
                    not (section in self.mine.model_fields_set and getattr(d, key) in getattr(self.mine, section)):
                self.undefined(("defaults", key), kind, getattr(d, key), section)

    def per_disk(self, path, over, base, key, what):
        """An io maximum given per disk (here or in the daemon's policy): no higher than the
        daemon's on each disk its io.devices names (a disk this one leaves out is unlimited)."""
        i = IO_MAX_KEYS.index(key)
        for disk in self.daemon.io.devices:
            mine, theirs = over.maxima_for((disk,))[i], base.maxima_for((disk,))[i]
            if _num(mine) > _num(theirs):
                self.problem(path, f"{_show(mine, False)} on disk {disk!r} is above the daemon's "
                                   f"{_show(theirs, False)} there for {what}: an agent's policy may only tighten "
                                   f"the daemon's ({self.daemon.source})")

    def classes(self, section, kind):
        if section not in self.mine.model_fields_set:
            return
        theirs = getattr(self.daemon, section)
        for name, cls in getattr(self.mine, section).items():
            if name not in theirs:
                self.undefined((section, name), kind, name, section)
                continue
            self.model((section, name), theirs[name], cls, f"{kind} class {name!r}")

    def rules(self):
        if "tool_rules" not in self.mine.model_fields_set:
            return
        for i, rule in enumerate(self.mine.tool_rules):
            cls = self.daemon.tool_classes.get(rule.class_)
            if cls is None:
                if rule.class_ not in self.mine.tool_classes or "tool_classes" not in self.mine.model_fields_set:
                    self.undefined(("tool_rules", i, "class"), "tool", rule.class_, "tool_classes")
                continue                      # else reported with the class
            theirs = [r for r in self.daemon.tool_rules if r.class_ == rule.class_]
            for block in ("memory", "cpu", "pids"):
                over = getattr(rule, block)
                if over is None:
                    continue
                for key in sorted(over.model_fields_set):
                    bound = [getattr(getattr(cls, block), key)] + \
                            [getattr(getattr(r, block), key) for r in theirs
                             if getattr(r, block) is not None and key in getattr(r, block).model_fields_set]
                    allowed = max(bound, key=_num)
                    mine = getattr(over, key)
                    if _num(mine) > _num(allowed):
                        size = block == "memory"
                        self.problem(("tool_rules", i, block, key),
                                     f"{_show(mine, size)} is above what the daemon's policy "
                                     f"{self.daemon.source} allows tool class {rule.class_!r} "
                                     f"({_show(allowed, size)})")
            if rule.gpu is not None:
                # GPU placement weighs every agent's calls against each other: an agent may
                # only repeat a prior the daemon's policy gives this class, as with `gpu`.
                given = [cls.gpu.prior] + [r.gpu.prior for r in theirs if r.gpu is not None]
                if rule.gpu.prior not in given:
                    self.problem(("tool_rules", i, "gpu", "prior"),
                                 f"gpu.prior {rule.gpu.prior!r} is not one the daemon's policy {self.daemon.source} "
                                 f"gives tool class {rule.class_!r} "
                                 f"({', '.join(repr(p) for p in given if p is not None) or 'none'}); leave it out")

    def host_wide(self):
        for section in HOST_WIDE:
            if section not in self.mine.model_fields_set:
                continue
            if getattr(self.mine, section).model_dump() != getattr(self.daemon, section).model_dump():
                self.problem((section,), f"{section} is host-wide: the running daemon's policy "
                                         f"{self.daemon.source} sets it for every agent; remove this section "
                                         "(or start the daemon with this policy)")


def _merge(base, over):
    """`base` with the keys `over` wrote replaced (limit blocks key by key)."""
    upd = {}
    for key in over.model_fields_set:
        v, b = getattr(over, key), getattr(base, key)
        if isinstance(v, LIMIT_BLOCKS) and isinstance(b, type(v)):
            v = _merge(b, v)
        upd[key] = v
    merged = base.model_copy(update=upd)
    if isinstance(merged, MemoryLimits) and merged.max is not None:
        # A tighter max pulls the daemon's high/low/min under it, as classify_tool does.
        merged = merged.model_copy(update={k: min(getattr(merged, k), merged.max)
                                           for k in ("min", "low", "high") if getattr(merged, k) is not None})
    return merged


def agent_policy(daemon, text, source, host_memory=None):
    """The policy one agent runs under: the daemon's with `text` (the agent's own policy,
    named `source` in messages) applied where it may be. PolicyError lists every problem."""
    # Its names may refer to the daemon's classes: it need not repeat the ones it leaves alone.
    mine = load_policy_text(text, source, host_memory if host_memory is not None else daemon.host_memory_bytes,
                            known_classes={"agent_classes": daemon.agent_classes, "tool_classes": daemon.tool_classes,
                                           "io_devices": daemon.io.devices})
    check = _Check(daemon, mine, source, load_located(text))
    check.classes("agent_classes", "agent")
    check.classes("tool_classes", "tool")
    check.rules()
    check.defaults()
    check.host_wide()
    if check.problems:
        raise PolicyError(sorted(check.problems, key=lambda p: p.line), source)
    upd = {}
    for section in ("agent_classes", "tool_classes"):
        if section in mine.model_fields_set:
            merged = dict(getattr(daemon, section))
            for name, cls in getattr(mine, section).items():
                merged[name] = _merge(merged[name], cls)
            upd[section] = merged
    if "tool_rules" in mine.model_fields_set:
        upd["tool_rules"] = mine.tool_rules
    if "defaults" in mine.model_fields_set:
        upd["defaults"] = _merge(daemon.defaults, mine.defaults)
    view = daemon.model_copy(update=upd)
    view._source = f"{source} (under {daemon.source})"
    view._host_memory_bytes = daemon.host_memory_bytes
    return view
