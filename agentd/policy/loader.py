"""Reading a policy: name or path -> YAML -> validated, frozen Policy, or every problem at once.

Each problem reads `FILE:LINE: KEY.PATH: message`, the way compilers report, so an editor can
jump to it. Validation never stops at the first problem: a policy author fixes them all in
one pass. The daemon keeps its last good Policy when a reload fails (load_policy_text
raises before anything changes).

Where named policies are found, first hit wins:
  1. each directory in $AGENTD_POLICY_DIR (os.pathsep-separated), if set;
  2. /etc/agentd/policies;
  3. the policies shipped with agentd: `policies/` next to the `agentd` package in a source
     checkout or editable install, else `<sys.prefix>/share/agentd/policies`.
"""

import difflib
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..errors import PolicyError
from .fields import is_disk_spec
from .schema import BUILTIN_TOOL_CLASSES, Policy
from .yamlsrc import YamlSyntaxError, load_located

ETC_POLICY_DIR = Path("/etc/agentd/policies")
ENV_POLICY_DIR = "AGENTD_POLICY_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Problem:
    source: str
    line: int
    path: str        # dotted key path, e.g. agent_classes.high.memory.max or tool_rules[2].class
    message: str

    def __str__(self):
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}:{self.line}: {where}{self.message}"


def shipped_policy_dirs():
    """Directories holding the policies shipped with agentd, most specific first."""
    here = Path(__file__).resolve().parent.parent.parent / "policies"
    return [d for d in (here, Path(sys.prefix) / "share" / "agentd" / "policies") if d.is_dir()]


def policy_search_path():
    env = os.environ.get(ENV_POLICY_DIR, "")
    dirs = [Path(d) for d in env.split(os.pathsep) if d]
    return dirs + [ETC_POLICY_DIR] + shipped_policy_dirs()


def resolve_policy(path_or_name):
    """A policy file path from a path, or from a name like `default` searched on the path."""
    s = str(path_or_name)
    if "/" in s or s.endswith((".yaml", ".yml")) or not _NAME_RE.match(s):
        return Path(s)
    searched = policy_search_path()
    for d in searched:
        for ext in (".yaml", ".yml"):
            candidate = d / (s + ext)
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in searched if d.is_dir() for p in d.glob("*.y*ml")})
    hint = difflib.get_close_matches(s, known, n=1)
    hint = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise PolicyError([f"{s}: no policy named {s!r}{hint}; looked in "
                       f"{', '.join(str(d) for d in searched)}; known: {', '.join(known) or 'none'}"], s)


def detect_host_memory():
    """Physical memory of this host, the base of percentage sizes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_policy(path_or_name, host_memory_bytes=None, block_device=None):
    """Load and validate a policy file or named policy; PolicyError lists every problem.
    `block_device(spec)`: the host's resolver of `io.devices` entries (raises AgentdError
    for a disk that is not there); None checks only their form."""
    path = resolve_policy(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise PolicyError([f"{path}: cannot read policy: {reason}"], str(path)) from None
    return load_policy_text(text, str(path), host_memory_bytes, block_device=block_device)


def check_file(path, block_device=None):
    """Every problem of a policy file as `FILE:LINE: KEY: message` lines; [] when it is valid."""
    try:
        load_policy(path, block_device=block_device)
    except PolicyError as err:
        return [str(p) for p in err.problems]
    return []


def load_policy_text(text, source="<policy>", host_memory_bytes=None, known_classes=None, block_device=None):
    """Validate policy YAML `text`; `source` names it in messages. Raises PolicyError.
    `known_classes` ({"agent_classes": names, "tool_classes": names}): classes defined
    elsewhere that names in the text may refer to (an agent's policy under the daemon's);
    its "io_devices", the disks named there.
    `block_device`: as for load_policy."""
    host = host_memory_bytes if host_memory_bytes is not None else detect_host_memory()
    try:
        doc = load_located(text)
    except YamlSyntaxError as err:
        raise PolicyError([Problem(source, err.line, "", str(err))], source) from None
    problems = [Problem(source, line, _fmt_path(path), msg) for line, path, msg in doc.problems]
    if doc.data is None:
        problems.append(Problem(source, 1, "", "policy is empty: it needs at least `version: 1`"))
        raise PolicyError(problems, source)
    if not isinstance(doc.data, dict):
        problems.append(Problem(source, 1, "", "a policy is a mapping of keys (version, agent_classes, ...)"))
        raise PolicyError(problems, source)

    policy = None
    try:
        policy = Policy.model_validate(doc.data, context={"host_memory_bytes": host, "block_device": block_device})
    except ValidationError as err:
        problems += [_problem(source, doc, e) for e in err.errors()]
    problems += _reference_problems(source, doc, known_classes or {})
    if problems:
        # Line order; within a line, the order the schema checked them in.
        problems = sorted(dict.fromkeys(problems), key=lambda p: p.line)
        raise PolicyError(problems, source)
    policy._source = source
    policy._host_memory_bytes = host
    return policy


def _reference_problems(source, doc, known):
    """Names that must refer to defined classes, checked on the raw data so that they are
    reported even when other parts of the policy failed validation."""
    data = doc.data
    out = []

    def defined(section, builtin):
        sec = data.get(section, None)
        if section not in data:
            return set(builtin) | set(known.get(section, ()))
        return set(sec) | set(known.get(section, ())) if isinstance(sec, dict) else None   # None: broken, skip

    agent = defined("agent_classes", {"normal"})
    tool = defined("tool_classes", BUILTIN_TOOL_CLASSES)
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}

    def check(names, path, value, kind, section, implicit=False):
        if names is None or not isinstance(value, str) or value in names:
            return
        close = difflib.get_close_matches(value, sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = "defined" if section in data else "built in"
        what = f"unknown {kind} class {value!r}{hint}"
        if implicit:   # the author never wrote the name: say where it came from
            what = f"the default {kind} class is {value!r} but {section} has no such class; " \
                   f"define it or set {_fmt_path(path)}"
        out.append(Problem(source, doc.line_of(path), _fmt_path(path),
                           f"{what}; {where}: {', '.join(sorted(names))}"))

    for key, names, kind, section in (("agent_class", agent, "agent", "agent_classes"),
                                      ("tool_class", tool, "tool", "tool_classes")):
        check(names, ("defaults", key), defaults.get(key, "normal"), kind, section,
              implicit=key not in defaults)
    out += _io_problems(source, doc, known.get("io_devices"))
    rules = data.get("tool_rules")
    seen = {}
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        if "class" in rule:
            check(tool, ("tool_rules", i, "class"), rule["class"], "tool", "tool_classes")
            _check_rule_prior(source, doc, data, i, rule, out)
        name = rule.get("name")
        if isinstance(name, str):
            if name in seen:
                out.append(Problem(source, doc.line_of(("tool_rules", i, "name")), f"tool_rules[{i}].name",
                                   f"duplicate rule name {name!r} (first used by tool_rules[{seen[name]}])"))
            seen.setdefault(name, i)
    return out


IO_MAX_KEYS = ("rbps", "wbps", "riops", "wiops")


def _io_problems(source, doc, devices_elsewhere=None):
    """A class's io maxima are written for the disks io.devices names: with none named
    they would limit nothing, silently. `devices_elsewhere`: the disks named by the policy
    this one is under (an agent's policy takes the daemon's io section)."""
    data = doc.data
    io = data.get("io")
    named = io.get("devices") if isinstance(io, dict) else None
    named = [d for d in (named if isinstance(named, list) else []) + list(devices_elsewhere or ())
             if isinstance(d, str)]
    out = []
    for section in ("agent_classes", "tool_classes"):
        classes = data.get(section)
        for name, cls in (classes.items() if isinstance(classes, dict) else ()):
            lim = cls.get("io") if isinstance(cls, dict) else None
            for key in (k for k in IO_MAX_KEYS if isinstance(lim, dict) and k in lim):
                path = (section, name, "io", key)
                if not named:
                    out.append(Problem(source, doc.line_of(path), _fmt_path(path),
                                       f"io.{key} limits the disks io.devices names, and it names none: add the "
                                       "disk (a path on it or MAJOR:MINOR) to io.devices, or remove this key"))
                    continue
                per_disk = lim[key] if isinstance(lim[key], dict) else {}
                for disk in (d for d in per_disk if is_disk_spec(d) and d not in named):
                    where = path + (disk,)
                    out.append(Problem(source, doc.line_of(where), _fmt_path(where),
                                       f"io.{key} names disk {disk!r}, which io.devices does not list "
                                       f"({', '.join(map(repr, named))}): write it as io.devices does, or add it "
                                       "there (agentd finds the disks it names once, at load)"))
    return out


def _check_rule_prior(source, doc, data, i, rule, out):
    """A rule's gpu.prior on a `device: cpu` class would never be used: say so."""
    classes = data.get("tool_classes")
    if not isinstance(rule.get("gpu"), dict) or "prior" not in rule["gpu"]:
        return
    cls = (classes if isinstance(classes, dict) else BUILTIN_TOOL_CLASSES).get(rule["class"])
    if isinstance(cls, dict) and cls.get("device") == "cpu":
        out.append(Problem(source, doc.line_of(("tool_rules", i, "gpu", "prior")), f"tool_rules[{i}].gpu.prior",
                           f"gpu.prior has no effect: class {rule['class']!r} has device: cpu (its calls never "
                           "use a GPU); remove it or use a class with device: auto or gpu"))


def _problem(source, doc, err):
    loc = _data_path(doc.data, err["loc"], err["type"])
    ctx = err.get("ctx") or {}
    if "subpath" in ctx:
        loc = loc + (ctx["subpath"],)
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        msg = _unknown_key_message(loc)
    elif err["type"] == "missing":
        msg = f"required key '{loc[-1]}' is missing"
        return Problem(source, doc.line_of(loc[:-1]), _fmt_path(loc), msg)
    return Problem(source, doc.line_of(loc), _fmt_path(loc), msg)


def _data_path(data, loc, err_type):
    """pydantic's error location mapped onto keys of the YAML document: drops its markers
    ('[key]', union member names) that are not keys of the data."""
    path, cur = [], data
    for i, el in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and el in cur:
            path.append(el)
            cur = cur[el]
        elif isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur):
            path.append(el)
            cur = cur[el]
        elif last and err_type in ("missing", "extra_forbidden") and isinstance(el, str):
            path.append(el)
    return tuple(path)


def _unknown_key_message(loc):
    key = loc[-1]
    allowed = _allowed_keys(loc[:-1])
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    if allowed:
        return f"unknown key '{key}'; allowed here: {', '.join(allowed)}"
    return f"unknown key '{key}'"


def _allowed_keys(path):
    """Keys the schema accepts at `path`, found by walking the model annotations."""
    t = Policy
    for el in path:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = next((f for n, f in t.model_fields.items() if (f.alias or n) == el), None)
            if field is None:
                return []
            t = field.annotation
        elif typing.get_origin(t) is dict:
            t = typing.get_args(t)[1]
        elif typing.get_origin(t) is list:
            t = typing.get_args(t)[0]
        else:
            return []
    t = _unwrap(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [f.alias or n for n, f in t.model_fields.items() if not f.exclude]
    return []


def _unwrap(t):
    """Strip Annotated[...] and Optional[...] from a type annotation."""
    while True:
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            t = typing.get_args(t)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            t = args[0] if len(args) == 1 else t
            if len(args) != 1:
                return t
        else:
            return t


def _fmt_path(path):
    out = ""
    for el in path:
        out += f"[{el}]" if isinstance(el, int) else (f".{el}" if out else str(el))
    return out
