"""Pure evaluation of a policy: which class and limits a tool call gets, and which of an
agent's children are its housekeeping rather than tool calls.

A rule's `program` condition holds when any program the call runs is listed, `only_programs`
when every one is (shells and stage-setting builtins such as cd aside), so a rule for quick
commands does not catch `cat data | python train.py`. The programs of
a call are the basename of argv[0] plus what its wrappers run: the command string of
`bash -c`/`sh -c` (every simple command of it, `cd x && pytest -q` gives cd and pytest;
`eval '...'` is followed), `env`/`timeout`/`nice`/`nohup`/`exec`/`command`/`time`,
`python -m MOD` (gives MOD), `npx X`, and `uv|poetry|pipenv run X`. `argv_regex` is searched
in the shell-quoted argv and in every unwrapped command string. Rules are tried in order and
the first match wins, so put heavy programs (pytest, cargo) before light ones (git).
"""

import functools
import os
import re
import shlex
from dataclasses import dataclass
from typing import Optional

from .. import shellwords
from ..forecast.shell import MAX_DEPTH as SPLIT_ONLY, split_command
from ..errors import AgentdError, RequestError
from ..units import parse_size

_SHELLS = {"bash", "sh", "dash", "zsh", "ksh", "ash", "busybox"}
# Builtins that set the stage; the call's main program is the first word that is none of these.
_STAGE_BUILTINS = {"cd", "pushd", "popd", "source", ".", "export", "set", "unset", "pwd", "true",
                   "false", ":", "eval", "exec", "alias", "umask", "ulimit", "shopt", "trap",
                   "command", "nohup", "env", "timeout", "nice", "sudo", "time"}
# Wrappers that run the rest of their argv, with the options they take an argument for.
_WRAPPERS = {"exec": set(), "command": set(), "nohup": set(), "time": set(), "sudo": {"-u", "-g"},
             "env": {"-u", "-C", "-S"}, "nice": {"-n"}, "timeout": {"-s", "-k", "--signal", "--kill-after"}}
_RUNNERS = {"uv": "run", "poetry": "run", "pipenv": "run", "pdm": "run"}
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_MAX_DEPTH = 4


@dataclass(frozen=True)
class ToolLimits:
    """Resolved limits of one tool call: bytes, CPUs (2.0 = two CPUs), counts; None = "max".
    agentd.kernel.cgroupfs.limit_values turns them into cgroup v2 file contents."""
    memory_min: int = 0
    memory_low: int = 0
    memory_high: Optional[int] = None
    memory_max: Optional[int] = None
    cpu_weight: int = 100
    cpu_max: Optional[float] = None
    pids_max: Optional[int] = None


@dataclass(frozen=True)
class ToolDecision:
    class_name: str
    rule_name: Optional[str]        # None when no rule matched
    priority: int
    latency: str                    # interactive | normal | batch
    limits: ToolLimits
    stragglers: str                 # kill | wait
    straggler_grace_s: float
    device: str                     # cpu | gpu | auto
    gpu: object                     # the class's ToolGpu settings (a rule's gpu.prior replaces the class's)
    forecast: bool                  # may adaptive limits move memory.high
    program: str                    # the program doing the work, e.g. pytest for bash -c "cd x && pytest"
    reason: str                     # one phrase: "rule tests", "declared class batch", "default class"
    notes: tuple = ()               # e.g. a --mem request capped by the policy


@functools.lru_cache(maxsize=512)
def _compiled(pattern):
    return re.compile(pattern)


def _shell_commands(text):
    """The simple commands (lists of words) of a shell command string: the one shell
    splitter agentd has (forecast/shell.py, which the forecasts' signatures use too).
    Nested `bash -c` / `eval` are left for _walk, which records their scripts."""
    return [list(c.argv) for c in split_command(text, depth=SPLIT_ONLY)]


def _shell_script(words):
    """The command string of `sh -c STRING` / `bash -lc STRING`, or None."""
    for i, w in enumerate(words[1:], 1):
        if w == "--":
            return None
        if w.startswith("-") and not w.startswith("--") and "c" in w[1:]:
            rest = [x for x in words[i + 1:] if not x.startswith("-")]
            return rest[0] if rest else None
        if not w.startswith(("-", "+")):
            return None
    return None


def _walk(words, depth, programs, scripts, launchers):
    while words and _ASSIGN_RE.match(words[0]):
        words = words[1:]
    if not words or depth > _MAX_DEPTH:
        return
    prog = os.path.basename(words[0])
    programs.append(prog)
    rest = words[1:]
    if prog in _SHELLS:
        script = _shell_script(words)
        if script is not None:
            scripts.append(script)
            for cmd in _shell_commands(script):
                _walk(cmd, depth + 1, programs, scripts, launchers)
    elif prog == "eval" and rest:
        scripts.append(" ".join(rest))
        for cmd in _shell_commands(" ".join(rest)):
            _walk(cmd, depth + 1, programs, scripts, launchers)
    elif prog in _WRAPPERS:
        takes_arg = _WRAPPERS[prog]
        i = 0
        while i < len(rest) and (rest[i].startswith("-") or _ASSIGN_RE.match(rest[i])):
            i += 2 if rest[i] in takes_arg else 1
        if prog == "timeout" and i < len(rest):
            i += 1                     # the duration
        _walk(rest[i:], depth + 1, programs, scripts, launchers)
    elif re.match(r"^python[0-9.]*$", prog) and "-m" in rest[:-1]:
        launchers.add(prog)
        programs.append(rest[rest.index("-m") + 1])
    elif prog == "npx" and rest:
        launchers.add(prog)
        _walk([w for w in rest if not w.startswith("-")][:1], depth + 1, programs, scripts, launchers)
    elif prog in _RUNNERS and rest[:1] == [_RUNNERS[prog]]:
        launchers.add(prog)
        _walk([w for w in rest[1:] if not w.startswith("-")][:1], depth + 1, programs, scripts, launchers)


@functools.lru_cache(maxsize=1024)
def _analyse(argv):
    """(programs in order, unique; texts argv_regex searches; main program)."""
    programs, scripts, launchers = [], [], set()
    _walk(list(argv), 0, programs, scripts, launchers)
    unique = tuple(dict.fromkeys(programs))
    # The program doing the work: not a shell, a stage-setting builtin or a launcher such
    # as `python -m` / `npx` whose target is known; else the first that is not a shell.
    doing = [p for p in unique if p not in _SHELLS and p not in _STAGE_BUILTINS and p not in launchers]
    fallback = [p for p in unique if p not in _SHELLS] or list(unique) or [""]
    main = doing[0] if doing else fallback[0]
    return unique, (shlex.join(argv),) + tuple(scripts), main


def _analysed(argv):
    # Only the bounded head of an argv is analysed (agentd/shellwords.py): it is the
    # agent's input, read on the daemon's event loop, and a cache key.
    return _analyse(shellwords.bounded_argv(list(argv)))


def command_programs(argv):
    """Every program a call runs, argv[0]'s basename first, wrappers unwrapped."""
    return _analysed(argv)[0]


def main_program(argv):
    """The program doing the work, e.g. pytest for `bash -c "cd x && python -m pytest"`."""
    return _analysed(argv)[2]


def program_of(argv):
    """main_program for the sentences agentd writes: never fails, "the command" for none."""
    if not argv:
        return "the command"
    try:
        return main_program(argv) or os.path.basename(argv[0])
    except Exception:            # a sentence must never fail a tool call
        return os.path.basename(argv[0])


def matches(match, argv, declared_class=None):
    """Whether a rule's match holds for this call (all given conditions, any_of branches)."""
    programs, texts, _ = _analysed(argv)
    if match.program is not None and not any(p in match.program for p in programs):
        return False
    if match.only_programs is not None:
        doing = [p for p in programs if p not in _SHELLS and p not in _STAGE_BUILTINS]
        if not doing or not all(p in match.only_programs for p in doing):
            return False
    if match.argv_regex is not None:
        rx = _compiled(match.argv_regex)
        if not any(rx.search(t) for t in texts):
            return False
    if match.declared_class is not None and declared_class not in match.declared_class:
        return False
    if match.any_of is not None and not any(matches(m, argv, declared_class) for m in match.any_of):
        return False
    return True


def _check_argv(argv):
    if not argv or isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
        raise RequestError("bad_argv", f"argv must be a non-empty list of strings, not {argv!r}")


def is_housekeeping(policy, argv):
    """Whether an agent's child with this argv is the agent's own housekeeping (no tool call)."""
    _check_argv(argv)
    return any(matches(m, argv) for m in policy.detection.housekeeping)


def _merged(base, override):
    """The class's limits block with the keys a rule wrote replaced."""
    if override is None:
        return base
    return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def _cap(value, cap):
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def classify_tool(policy, argv, declared_class=None, mem_override=None):
    """Class and resolved limits of a tool call: first matching rule, else the declared class
    (when the policy honours it), else defaults.tool_class. `mem_override` (the caller's
    `--mem`) sets memory.max, never above the policy's cap."""
    _check_argv(argv)
    rule = next((r for r in policy.tool_rules if matches(r.match, argv, declared_class)), None)
    if rule is not None:
        cls, reason = policy.tool_class(rule.class_), f"rule {rule.name}"
    elif declared_class and policy.defaults.honour_declared_class:
        cls, reason = policy.tool_class(declared_class), f"declared class {declared_class}"
    else:
        cls, reason = policy.tool_class(), "default class"
    mem = _merged(cls.memory, rule and rule.memory)
    cpu = _merged(cls.cpu, rule and rule.cpu)
    pids = _merged(cls.pids, rule and rule.pids)
    mem_max, notes = mem.max, []
    if mem_override is not None:
        try:
            want = parse_size(mem_override, policy.host_memory_bytes)
        except AgentdError as err:
            raise RequestError("bad_size", f"--mem: {err}") from None
        if want is None:
            if mem_max is not None:
                notes.append(f"--mem {mem_override} asks for no limit; the policy caps memory.max at {mem_max}")
        elif mem_max is None or want <= mem_max:
            mem_max = want
        else:
            notes.append(f"--mem {mem_override} is above the policy's cap; memory.max stays {mem_max}")
    # Nothing below memory.max may exceed it (a --mem under the class's high lowers high too).
    high, low, mn = _cap(mem.high, mem_max), _cap(mem.low, mem_max), _cap(mem.min, mem_max)
    limits = ToolLimits(memory_min=mn, memory_low=low, memory_high=high, memory_max=mem_max,
                        cpu_weight=cpu.weight, cpu_max=cpu.max, pids_max=pids.max)
    return ToolDecision(
        class_name=cls.name, rule_name=rule.name if rule else None, priority=cls.priority,
        latency=cls.latency, limits=limits, stragglers=cls.stragglers,
        straggler_grace_s=cls.straggler_grace_s, device=cls.device,
        gpu=cls.gpu if rule is None or rule.gpu is None else cls.gpu.model_copy(update={"prior": rule.gpu.prior}),
        forecast=cls.forecast, program=main_program(argv), reason=reason, notes=tuple(notes))
