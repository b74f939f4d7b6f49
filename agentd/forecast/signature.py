"""Tool-call signatures: an argv normalised to what predicts its memory.

A forecast is only as good as the history it looks up, and the lookup key decides what is
"the same tool call". `signature(argv)` returns three keys, fine to coarse, so the forecaster
can fall back to a coarser one when the fine one has no history:

    program  the tool doing the work:           pytest        pip           git
    coarse   + subcommand and flags that change  pytest -n4    pip install   git status
             memory by multiples
    full     + its targets (files, packages,     pytest -n4    pip install   git status
             scripts) and lesser flags            tests/x.py    -e .

Rules, in the order applied:

1. Shell wrappers are peeled (see `agentd.forecast.shell`): `bash -c`/`sh -c` scripts,
   `source ... && eval '...'` (Claude Code's wrapper), `cd x && cmd`, `VAR=v cmd`,
   redirections, here-documents, `if`/`for` keywords; and command wrappers: `timeout 60`,
   `env`, `nice`, `nohup`, `time`, `stdbuf`, `sudo`, `exec`, `uv run`, `poetry run`, `npx`, ...
2. Of the simple commands left, the heaviest does the work: build/test/install tools beat
   interpreters, which beat file utilities (`git`, `grep`, `ls`), which beat shell built-ins
   (`cd`, `echo`, `source`). On a tie the first pipeline stage wins: in `pytest | tail` the
   producer holds the memory, the filter holds a few pages.
3. Program names lose paths and versions (`/usr/bin/python3.11` -> `python`, `pip3` -> `pip`,
   `py.test` -> `pytest`); `python -m X` is tool `X` (`python -m pytest` == `pytest`,
   `python -m pip` == `pip`).
4. Paths: `./` and trailing `/` dropped, pytest node ids (`::test_x`, `[param]`) cut, so a
   test signature is kept at **file level**: one test of a file and the whole file load the
   same imports and fixtures, and node-level keys would rarely repeat. Only the last three
   components are kept, so `/testbed/pkg/tests/t.py` and `pkg/tests/t.py` (run from /testbed)
   meet.
5. Only tools whose arguments name the work (test runners, scripts, installs, builds) keep
   positional arguments in `full`, at most four; `grep PATTERN file` keeps none, since its
   pattern is new every time and would only make `full` never repeat.
6. `python -c CODE` and `python - <<EOF` scripts are keyed by the top-level modules they
   import (`python -c import:numpy,torch`): agents write a fresh script each time, but what
   it imports is what it costs.

`tool_class` is a default class (`low`/`medium`/`high`) from rule 2's ranking, for callers
without a policy classification and for cold-start priors.
"""

import functools
import re
from dataclasses import dataclass

from .. import shellwords
from .shell import MAX_DEPTH, SimpleCommand, shell_script, split_command

# Rule 2's ranks. Unknown programs rank as interpreters (medium): guessing "light" for an
# unknown binary is the error that OOMs.
_HEAVY = {
    "pytest", "tox", "nox", "unittest", "pip", "uv", "poetry", "pipenv", "conda", "mamba",
    "hatch", "npm", "yarn", "pnpm", "cargo", "go", "make", "cmake", "ninja", "gcc", "g++",
    "cc", "c++", "clang", "clang++", "rustc", "javac", "mvn", "gradle", "docker", "podman",
    "jest", "vitest", "mocha", "tsc", "webpack", "bazel", "apt", "apt-get", "pre-commit",
    "mypy", "pyright", "sphinx-build", "setup.py", "meson", "dotnet", "bundle", "gem",
    "composer", "build", "nosetests", "trial",
}
_LIGHT = {
    "git", "grep", "egrep", "fgrep", "rg", "ls", "cat", "find", "sed", "awk", "head", "tail",
    "wc", "diff", "sort", "uniq", "cut", "tr", "xargs", "mkdir", "rm", "cp", "mv", "touch",
    "chmod", "chown", "ln", "which", "file", "stat", "tree", "du", "df", "ps", "printenv",
    "date", "basename", "dirname", "realpath", "readlink", "tee", "less", "more", "jq",
    "curl", "wget", "tar", "unzip", "gzip", "patch", "nl", "od", "xxd", "md5sum", "sha256sum",
    "whoami", "id", "uname", "hostname", "free", "kill", "pkill", "pgrep", "lsof", "column",
    "comm", "paste", "rev", "seq", "yes", "fold", "fmt", "strings", "cmp", "ag", "fd",
}
_TRIVIAL = {
    "cd", "source", ".", "export", "set", "unset", "echo", "printf", "pwd", "true", "false",
    "exit", "sleep", "alias", "shopt", "deactivate", ":", "return", "wait", "read", "trap",
    "ulimit", "umask", "local", "declare", "hash", "type", "test", "[", "[[", "pushd",
    "popd", "clear", "history",
}
_RANK_CLASS = {3: "high", 2: "medium", 1: "low", 0: "low"}

# Rule 1's command wrappers: name -> its options that take a value (skipped with it).
_WRAPPERS = {
    "timeout": {"-s", "--signal", "-k", "--kill-after"}, "nice": {"-n", "--adjustment"},
    "nohup": set(), "exec": set(), "command": set(), "builtin": set(), "time": set(),
    "stdbuf": set(), "sudo": {"-u", "-g", "-C"}, "env": {"-u", "--unset", "-C", "--chdir"},
    "ionice": {"-c", "-n"}, "taskset": set(), "xvfb-run": {"-a"}, "npx": {"-p"},
    "catchsegv": set(), "chronic": set(), "unbuffer": set(),
}
_NUMERIC_FIRST = {"timeout", "taskset"}   # `timeout 60 cmd`: the first operand is not the cmd
_RUNNERS = {("uv", "run"), ("poetry", "run"), ("pipenv", "run"), ("pdm", "run"),
            ("hatch", "run"), ("conda", "run"), ("pnpm", "exec"), ("yarn", "exec"),
            ("coverage", "run"), ("npm", "exec")}
# Tools with a subcommand (`git status`) and global options that take a value before it.
_SUBCOMMAND = {
    "git": {"-C", "-c", "--git-dir", "--work-tree"}, "pip": set(), "npm": {"--prefix"},
    "yarn": {"--cwd"}, "pnpm": {"-C", "--dir"}, "cargo": {"-C", "--manifest-path"},
    "go": set(), "uv": set(), "poetry": set(), "conda": set(), "mamba": set(),
    "docker": {"-H", "--context"}, "podman": set(), "apt": set(), "apt-get": set(),
    "kubectl": {"-n", "--namespace"}, "dotnet": set(), "pipenv": set(), "hatch": set(),
    "pre-commit": set(), "bundle": set(), "gem": set(), "composer": set(), "gradle": set(),
    "mvn": set(), "bazel": set(), "brew": set(), "systemctl": set(), "tox": set(),
}
# Script runners whose second word names the script (`npm run build`).
_SCRIPT_SUBCOMMANDS = {"run", "run-script", "exec", "test", "x"}
# Tools whose positional arguments name the work (rule 5).
_TARGETED = {"pytest", "unittest", "tox", "nox", "jest", "vitest", "mocha", "python", "node",
             "ruby", "perl", "pip", "uv", "npm", "yarn", "pnpm", "cargo", "go", "make",
             "gcc", "g++", "cc", "clang", "rustc", "javac", "tsc", "bash", "sh", "docker",
             "conda", "mamba", "poetry", "setup.py", "mvn", "gradle", "bazel", "nosetests"}
# Flags that change memory by multiples go into `coarse`, lesser ones into `full`.
# flag -> how its value is kept: None = takes no value, True = value kept, False = value
# skipped (`-k EXPR`: that a subset runs matters, the expression would never repeat).
_SALIENT = {
    "pytest": ({"-n": True, "--numprocesses": True, "--forked": None},
               {"-k": False, "-m": True, "--cov": None, "--lf": None, "--last-failed": None}),
    "cargo": ({"--release": None, "-r": None, "--workspace": None, "--all": None,
               "-j": True, "--jobs": True},
              {"-p": True, "--package": True, "--all-features": None, "--features": True}),
    "make": ({"-j": True, "--jobs": True}, {}),
    "go": ({"-race": None, "-p": True}, {}),
    "pip": ({"-e": None, "--editable": None, "-r": None, "--requirement": None},
            {"-U": None, "--upgrade": None, "--no-deps": None}),
    "npm": ({"--workspaces": None}, {}),
    "jest": ({"--runInBand": None, "-i": None, "-w": True, "--maxWorkers": True}, {}),
    "mvn": ({"-T": True}, {}),
}
# Pytest-style options that take a value and are not salient (their value is not a target).
_VALUE_OPTS = {"--tb", "-p", "-o", "--rootdir", "-c", "--maxfail", "--deselect", "--ignore",
               "--basetemp", "--timeout", "--durations", "-W", "--log-level", "--junitxml",
               "--cov-report", "--import-mode", "-r", "--color", "--capture", "-n", "-k",
               "-m", "-j", "-p", "--package", "--features", "--target", "-t", "-f", "--file",
               "-w", "--maxWorkers", "-T", "--prefix", "-i", "--index-url",
               "--extra-index-url", "-C", "--python", "--config-file"}
_IMPORT_RE = re.compile(r"(?:^|;)[ \t]*(?:from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import"
                        r"|import[ \t]+([A-Za-z_][\w., \t]*))", re.M)
_VERSION_RE = re.compile(r"(?<=[a-z+])[\d.]+$")
_PKG_RE = re.compile(r"^([A-Za-z0-9_.\-]+)")
_MAX_TARGETS = 4
_MAX_PATH_PARTS = 3


@dataclass(frozen=True)
class Signature:
    full: str
    coarse: str
    program: str
    tool_class: str = "medium"   # default class from the tool's rank; policy may override

    def levels(self):
        """Keys from finest to coarsest: the forecaster's fallback order."""
        return (self.full, self.coarse, self.program)


def signature(argv):
    """Signature of an argv list or of a command string (as agents' Bash tools log it)."""
    # Only the bounded head is read (agentd/shellwords.py): an argv is the agent's input,
    # and the cache key must not hold megabytes either.
    if isinstance(argv, str):
        return _signature(shellwords.bounded(argv))
    return _signature(shellwords.bounded_argv([str(a) for a in argv]))


# The daemon asks for a call's signature at its start (forecast) and at its end (history),
# and agents repeat their commands; the shell parse is the costly part, and pure.
@functools.lru_cache(maxsize=1024)
def _signature(argv):
    if isinstance(argv, str):
        cmds = split_command(argv)
    else:
        argv = list(argv)
        script = shell_script(argv)
        cmds = split_command(script) if script is not None else [SimpleCommand(tuple(argv), True)]
    picked = _pick(cmds, 0)
    if picked is None:
        return Signature("", "", "", "low")
    return _normalise(*picked)


def _pick(cmds, depth):
    """(tool, args, stdin script) of the heaviest of `cmds` (rule 2)."""
    best, best_key = None, None
    for idx, cmd in enumerate(cmds):
        got = _unwrap(list(cmd.argv), cmd.stdin_script, depth)
        if got is None:
            continue
        key = (_rank(got[0]), cmd.first_stage, -idx)
        if best_key is None or key > best_key:
            best, best_key = got, key
    return best


def _program_name(word):
    name = word.rsplit("/", 1)[-1]
    if name in ("py.test", "pytest-3"):
        return "pytest"
    if name.endswith(".py"):
        return "setup.py" if name == "setup.py" else name
    return _VERSION_RE.sub("", name) or name


def _rank(tool):
    if tool in _HEAVY:
        return 3
    if tool in _TRIVIAL:
        return 0
    if tool in _LIGHT:
        return 1
    return 2


def _unwrap(argv, stdin, depth):
    """(tool, remaining args, stdin) after command wrappers; `python -m X` becomes tool X."""
    for _ in range(8):
        if not argv:
            return None
        prog = _program_name(argv[0])
        if prog in _WRAPPERS or (len(argv) > 1 and (prog, argv[1]) in _RUNNERS):
            argv = _strip_wrapper(prog, argv)
            continue
        script = shell_script(argv)
        if script is not None:       # `timeout 60 bash -c '...'`
            return _pick(split_command(script), depth + 1) if depth < MAX_DEPTH else None
        if prog in ("python", "pypy") and len(argv) > 2 and argv[1] == "-m":
            return _program_name(argv[2].split(".")[0]), argv[3:], stdin
        return prog, argv[1:], stdin
    return None


def _strip_wrapper(prog, argv):
    """argv of the wrapped command, or None when `prog` is not acting as a wrapper here."""
    if len(argv) > 1 and (prog, argv[1]) in _RUNNERS:
        rest = argv[2:]
        if prog == "conda":          # conda run -n ENV cmd
            while rest and rest[0].startswith("-"):
                rest = rest[2:] if rest[0] in ("-n", "--name", "-p", "--prefix") else rest[1:]
        elif prog == "coverage" and rest[:1] == ["-m"]:
            return ["python"] + rest
        else:
            rest = [a for a in rest if a != "--"] if rest[:1] == ["--"] else rest
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
        return rest
    with_value = _WRAPPERS[prog]
    rest = argv[1:]
    while rest:
        a = rest[0]
        if prog == "env" and "=" in a and not a.startswith("-"):
            rest = rest[1:]
        elif a.startswith("-") and a != "-":
            rest = rest[2:] if a in with_value else rest[1:]
        else:
            break
    if prog in _NUMERIC_FIRST and rest:
        rest = rest[1:]
    return rest


def _norm_path(arg):
    a = arg.split("::", 1)[0]
    a = re.sub(r"\[.*$", "", a)
    while a.startswith("./"):
        a = a[2:]
    a = a.rstrip("/") or a
    parts = [p for p in a.split("/") if p]
    if len(parts) > _MAX_PATH_PARTS:
        parts = parts[-_MAX_PATH_PARTS:]
    return "/".join(parts) if parts else a


def _norm_package(arg):
    if "/" in arg or arg in (".", ".."):
        return _norm_path(arg)
    m = _PKG_RE.match(arg)
    return m.group(1).lower().replace("_", "-") if m else arg


def _imports(code):
    mods = set()
    for m in _IMPORT_RE.finditer(code):
        if m.group(1):
            mods.add(m.group(1))
        else:
            for part in m.group(2).split(","):
                name = part.strip().split(" ")[0].split(".")[0]
                if name:
                    mods.add(name)
    return sorted(mods)


def _parse_args(tool, args):
    """(subcommand words, coarse flags, full flags, positional targets)."""
    major, minor = _SALIENT.get(tool, ({}, {}))
    sub, coarse_flags, full_flags, targets = [], [], [], []
    global_opts = _SUBCOMMAND.get(tool)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and len(a) > 1:
            flag, eq, val = a.partition("=")
            if not eq and not a.startswith("--") and len(a) > 2 and a[:2] in {**major, **minor}:
                flag, eq, val = a[:2], "=", a[2:]      # glued short option: `-j8`, `-n4`
            table = major if flag in major else minor if flag in minor else None
            if table is not None:
                keep = table[flag]
                if keep is not None and not eq and i + 1 < len(args):
                    val = args[i + 1]
                    i += 1
                word = f"{flag}={val}" if keep else flag
                (coarse_flags if table is major else full_flags).append(word)
            elif not sub and global_opts and flag in global_opts and not eq:
                i += 1
            elif flag in _VALUE_OPTS and not eq and not (tool == "pip" and flag == "-e"):
                i += 1
            # other flags (-v, -x, --tb=short, -q, ...) do not change memory by much
        elif global_opts is not None and not sub:
            sub.append(a)
            if a in _SCRIPT_SUBCOMMANDS and tool in ("npm", "yarn", "pnpm") and i + 1 < len(args):
                sub.append(args[i + 1])
                i += 1
        elif tool == "make" and not sub:
            sub.append(a)
        else:
            targets.append(a)
        i += 1
    return sub, coarse_flags, full_flags, targets


def _normalise(tool, args, stdin):
    cls = _RANK_CLASS[_rank(tool)]
    if tool == "python" or tool in ("python2", "pypy"):
        tool = "python"
        if args[:1] == ["-c"]:
            code = args[1] if len(args) > 1 else ""
            imp = _imports(code)
            return Signature(_join("python -c", "import:" + ",".join(imp) if imp else ""),
                             "python -c", "python", cls)
        script = next((a for a in args if not a.startswith("-")), None)
        if script is None or script == "-":
            imp = _imports(stdin)
            return Signature(_join("python -", "import:" + ",".join(imp) if imp else ""),
                             "python -", "python", cls)
        return Signature(f"python {_norm_path(script)}", "python <script>", "python", cls)
    sub, coarse_flags, full_flags, targets = _parse_args(tool, args)
    coarse = " ".join([tool] + sub + sorted(set(coarse_flags)))
    if tool in _TARGETED:
        norm = _norm_package if tool in ("pip", "uv", "npm", "yarn", "pnpm", "conda",
                                          "mamba", "poetry", "gem") else _norm_path
        t = [norm(a) for a in targets]
        if tool in ("pip", "uv", "npm", "yarn", "pnpm"):
            t.sort()                 # install order does not change the cost
        more = len(t) - _MAX_TARGETS
        t = t[:_MAX_TARGETS] + ([f"+{more}"] if more > 0 else [])
    else:
        t = []
    full = _join(coarse, " ".join(sorted(set(full_flags)) + t))
    return Signature(full, coarse, tool, cls)


def _join(a, b):
    return f"{a} {b}" if b else a
