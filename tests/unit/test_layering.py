"""The package's layering rules, read from its source with ast so that they stay true:

- only agentd/kernel/ reads /proc and /sys (no path literal under them elsewhere, no psutil,
  which reads /proc on agentd's behalf);
- policy/ and forecast/ are pure: they import nothing from agentd.kernel;
- each kernel file agentd reads is named once (the bare roots aside, which adapters take
  as a parameter so tests can point them at a fake tree);
- agentd.kernel has no import cycle (its modules import downwards only), counting imports
  made inside functions too: a cycle hidden behind a lazy import is still a cycle;
- BPF objects are loaded only in agentd/kernel/: nothing outside it imports the libbpf
  bindings or the object finder (a loader outside kernel/, as the sched_ext scheduler's
  once was, would).

Each checker is first shown a violation it must find, so a rule that stopped looking fails.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "agentd"
KERNEL_PREFIXES = ("/proc", "/sys")
PURE = ("agentd.policy", "agentd.forecast")
# What a BPF loader needs: the libbpf bindings and the object finder.
BPF_LOADING = ("agentd.kernel.libbpf", "agentd.kernel.libbpf_ctypes", "agentd.kernel.libbpf_structops",
               "agentd.kernel.bpf_objects")
# The one exception: the planner turns a class's limits into cgroup v2 file contents with
# kernel.cgroupfs.limit_values, because a plan carries them as files; it goes once a plan
# carries typed limits and the controller converts them where it writes.
PURE_EXEMPT = {("agentd.policy.planner", "agentd.kernel"), ("agentd.policy.planner", "agentd.kernel.cgroupfs")}


def module_name(path, root=PACKAGE):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root=PACKAGE):
    """{module name: source path} of every module of the package."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(tree, module, is_package, known=()):
    """Absolute names of the modules `tree` (the source of `module`) imports, wherever the
    import statement is. `from X import y` counts X, and X.y where that is a module."""
    out = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return out


def _docstrings(tree):
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, nodes) and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def kernel_paths(tree):
    """(line, text) of every string that names a path under /proc or /sys (an f-string with
    {} for what it fills in): what a module would open. Docstrings only describe, and messages
    that mention a path mid-sentence name no file to open, so neither counts."""
    skip = _docstrings(tree) | {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if text.startswith(KERNEL_PREFIXES):
            found.append((node.lineno, text[:60]))
    return found


def bpf_loading(names):
    """The BPF-loading modules among `names` (imported module names), sorted."""
    return sorted(i for i in names if i in BPF_LOADING)


def cycles(graph):
    """Strongly connected components of `graph` ({node: set of nodes}) that form a cycle."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def sources():
    mods = package_modules()
    return {m: (p, ast.parse(p.read_text(), str(p))) for m, p in mods.items()}


def _imports_of(sources, module):
    path, tree = sources[module]
    return imports(tree, module, path.name == "__init__.py", known=sources)


# --- the checkers find what they look for ---------------------------------------------

def test_checkers_find_violations():
    src = ast.parse('"""Reads /proc/meminfo."""\n'
                    'import psutil\n'
                    'from ..kernel import cgroupfs\n'
                    'def f(pid):\n'
                    '    """/sys/x in a docstring is prose."""\n'
                    '    from .sub import g\n'
                    '    raise OSError("cannot read /proc: mid-sentence")\n'
                    '    return open(f"/proc/{pid}/cgroup").read() + open("/sys/kernel/btf/vmlinux").read()\n')
    assert [t for _, t in kernel_paths(src)] == ["/proc/{}/cgroup", "/sys/kernel/btf/vmlinux"]
    known = {"agentd.kernel.cgroupfs"}
    assert imports(src, "agentd.policy.match", False, known) == {
        "psutil", "agentd.kernel", "agentd.kernel.cgroupfs", "agentd.policy.sub"}
    assert imports(ast.parse("from . import x"), "agentd.kernel", True, {"agentd.kernel.x"}) == {
        "agentd.kernel", "agentd.kernel.x"}
    loader = ast.parse("from ..kernel import bpf_objects, libbpf\n")
    known = {"agentd.kernel.bpf_objects", "agentd.kernel.libbpf"}
    assert bpf_loading(imports(loader, "agentd.sched.scx", False, known)) == [
        "agentd.kernel.bpf_objects", "agentd.kernel.libbpf"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# --- the package keeps the rules --------------------------------------------------------

def test_only_kernel_names_proc_and_sys_paths(sources):
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}: {text!r}"
           for m, (p, tree) in sources.items() if not m.startswith("agentd.kernel")
           for line, text in kernel_paths(tree)]
    assert not bad, "read /proc and /sys through an adapter in agentd/kernel/:\n" + "\n".join(bad)


def test_each_kernel_path_is_named_once(sources):
    where = {}
    for m, (_, tree) in sources.items():
        for line, text in kernel_paths(tree):
            if text not in KERNEL_PREFIXES:
                where.setdefault(text, []).append(f"{m}:{line}")
    twice = {t: w for t, w in where.items() if len(w) > 1}
    assert not twice, f"one adapter reads each kernel file: {twice}"


def test_nothing_outside_kernel_uses_psutil(sources):
    bad = [m for m in sources if not m.startswith("agentd.kernel")
           and any(i == "psutil" or i.startswith("psutil.") for i in _imports_of(sources, m))]
    assert not bad, f"psutil reads /proc; use agentd.kernel.procfs instead: {bad}"


def test_policy_and_forecast_import_no_kernel_adapter(sources):
    bad = {m: sorted(i for i in _imports_of(sources, m)
                     if (i == "agentd.kernel" or i.startswith("agentd.kernel.")) and (m, i) not in PURE_EXEMPT)
           for m in sources if m.startswith(PURE)}
    bad = {m: i for m, i in bad.items() if i}
    assert not bad, f"policy/ and forecast/ are pure; they take kernel facts as arguments: {bad}"


def test_kernel_modules_import_without_cycles(sources):
    kernel = {m for m in sources if m.startswith("agentd.kernel.")}
    graph = {m: {i for i in _imports_of(sources, m) if i in kernel and i != m} for m in kernel}
    assert graph["agentd.kernel.libbpf"], "the graph lost the kernel's own imports"
    assert not cycles(graph), f"import cycles inside agentd.kernel: {cycles(graph)}"


def test_bpf_objects_are_loaded_only_in_kernel(sources):
    bad = {m: bpf_loading(_imports_of(sources, m)) for m in sources if not m.startswith("agentd.kernel")}
    bad = {m: i for m, i in bad.items() if i}
    assert not bad, f"BPF loaders live in agentd/kernel/ beside the others: {bad}"
