"""Tool-call classification and housekeeping detection: pure functions over a policy."""

import os
import re

import pytest
from hypothesis import given, strategies as st

from agentd.errors import RequestError
from agentd.kernel import cgroupfs as cgf
from agentd.policy import classify_tool, command_programs, is_housekeeping, load_policy, load_policy_text
from agentd.policy.match import main_program

GiB, MiB = 2**30, 2**20
HOST = 32 * GiB

POLICY = """
version: 1
tool_classes:
  interactive: {priority: 80, latency: interactive, memory: {max: 1Gi}, pids: {max: 256}}
  normal: {priority: 50, memory: {high: 3Gi, max: 4Gi}, cpu: {weight: 100, max: 200%}}
  batch: {priority: 20, latency: batch, memory: {low: 256Mi, high: 6Gi, max: 8Gi}, stragglers: wait}
  gpu: {priority: 30, device: gpu}
tool_rules:
  - name: tests
    match: {program: [pytest, tox]}
    class: batch
    memory: {max: 2Gi}
  - name: anything-python
    match: {program: [python, python3]}
    class: normal
  - name: quick
    match: {only_programs: [git, ls, cat, head]}
    class: interactive
  - name: gpu-declared
    match: {declared_class: gpu}
    class: gpu
  - name: npm
    match:
      any_of:
        - {argv_regex: '\\bnpm (run )?build\\b'}
        - {program: [webpack], declared_class: [batch]}
    class: batch
"""


@pytest.fixture(scope="module")
def policy():
    return load_policy_text(POLICY, "match.yaml", host_memory_bytes=HOST)


def test_first_match_wins(policy):
    # pytest is run by python: both the tests rule and anything-python hold; tests comes first
    d = classify_tool(policy, ["python3", "-m", "pytest", "-x"])
    assert (d.class_name, d.rule_name, d.program) == ("batch", "tests", "pytest")
    d = classify_tool(policy, ["python3", "script.py"])
    assert (d.class_name, d.rule_name) == ("normal", "anything-python")


@pytest.mark.parametrize("argv,program", [
    (["bash", "-c", "cd x && pytest -q"], "pytest"),
    (["/bin/sh", "-c", "FOO=1 tox -e py311"], "tox"),
    (["bash", "-lc", "cd repo; timeout 600 pytest tests/"], "pytest"),
    (["bash", "-c", "source /tmp/snap.sh && eval 'cd /r && pytest -k x' < /dev/null && pwd -P >| /tmp/cwd"],
     "pytest"),                                  # Claude Code's wrapper around every command
    (["env", "PYTHONPATH=.", "pytest"], "pytest"),
    (["nice", "-n", "10", "pytest"], "pytest"),
    (["bash", "-c", "if true; then pytest; fi"], "pytest"),
])
def test_shell_and_wrapper_unwrapping(policy, argv, program):
    assert program in command_programs(argv)
    d = classify_tool(policy, argv)
    assert (d.class_name, d.rule_name, d.program) == ("batch", "tests", program)


def test_programs_in_order_and_unique():
    assert command_programs(["bash", "-c", "cd a && git status | head && git diff"]) == \
        ("bash", "cd", "git", "head")
    assert command_programs(["/usr/bin/python3.11", "-m", "pip", "install", "x"]) == ("python3.11", "pip")
    assert command_programs(["uv", "run", "pytest"]) == ("uv", "pytest")
    assert command_programs(["npx", "--yes", "jest"]) == ("npx", "jest")
    assert command_programs(["bash", "-c", "-l"]) == ("bash",)
    assert main_program(["bash", "-c", "cd x && export A=1 && make -j4"]) == "make"
    assert main_program(["bash", "-c", "cd x"]) == "cd"


def test_only_programs_needs_all(policy):
    assert classify_tool(policy, ["bash", "-c", "git log | head -5"]).rule_name == "quick"
    # one heavy program in the pipe is enough to leave the quick class
    d = classify_tool(policy, ["bash", "-c", "cat data.csv | ./train"])
    assert (d.class_name, d.rule_name) == ("normal", None)


def test_regex_sees_the_inner_command(policy):
    d = classify_tool(policy, ["bash", "-c", "cd web && npm run build"])
    assert (d.class_name, d.rule_name) == ("batch", "npm")


def test_declared_class(policy):
    # a rule may match on the declared class
    assert classify_tool(policy, ["./run.sh"], declared_class="gpu").class_name == "gpu"
    # conditions in one branch all have to hold
    assert classify_tool(policy, ["webpack"], declared_class="batch").rule_name == "npm"
    assert classify_tool(policy, ["webpack"]).rule_name is None
    # no rule matched: the declared class is honoured
    d = classify_tool(policy, ["./run.sh"], declared_class="interactive")
    assert (d.class_name, d.rule_name, d.reason) == ("interactive", None, "declared class interactive")
    # ... but rules come first
    assert classify_tool(policy, ["pytest"], declared_class="interactive").class_name == "batch"
    with pytest.raises(RequestError) as info:
        classify_tool(policy, ["./run.sh"], declared_class="turbo")
    assert info.value.code == "unknown_class" and "no tool class 'turbo'" in str(info.value)


def test_declared_class_ignored_when_policy_says_so():
    p = load_policy_text("version: 1\ndefaults: {honour_declared_class: false}\n", "d.yaml",
                         host_memory_bytes=HOST)
    d = classify_tool(p, ["./run.sh"], declared_class="interactive")
    assert (d.class_name, d.reason) == ("normal", "default class")


def test_rule_overrides_only_the_keys_it_writes(policy):
    d = classify_tool(policy, ["pytest"])
    # tests rule writes memory.max 2Gi; batch's low stays; batch's high 6Gi is capped at the new max
    assert (d.limits.memory_low, d.limits.memory_high, d.limits.memory_max) == (256 * MiB, 2 * GiB, 2 * GiB)
    assert d.stragglers == "wait" and d.latency == "batch" and d.priority == 20


def test_default_class_and_limits(policy):
    d = classify_tool(policy, ["./configure"])
    assert (d.class_name, d.rule_name, d.reason) == ("normal", None, "default class")
    assert d.limits.memory_high == 3 * GiB and d.limits.memory_max == 4 * GiB
    assert d.limits.cpu_max == 2.0 and d.limits.cpu_weight == 100 and d.limits.pids_max is None
    assert cgf.limit_values(d.limits) == {
        "memory.min": "0", "memory.low": "0", "memory.high": str(3 * GiB), "memory.max": str(4 * GiB),
        "cpu.weight": "100", "cpu.max": "200000 100000", "pids.max": "max"}


def test_mem_override_lowers_but_never_raises_the_cap(policy):
    d = classify_tool(policy, ["./configure"], mem_override="1Gi")
    assert d.limits.memory_max == GiB and d.limits.memory_high == GiB and d.notes == ()
    d = classify_tool(policy, ["./configure"], mem_override="16Gi")
    assert d.limits.memory_max == 4 * GiB
    assert d.notes and "above the policy's cap" in d.notes[0]
    d = classify_tool(policy, ["./configure"], mem_override="10%")
    assert d.limits.memory_max == int(HOST * 0.1)        # 3.2 GiB, under the class's 4 GiB
    with pytest.raises(RequestError) as info:
        classify_tool(policy, ["./configure"], mem_override="lots")
    assert info.value.code == "bad_size"


def test_unlimited_class_takes_the_override():
    p = load_policy_text("version: 1\n", "u.yaml", host_memory_bytes=HOST)
    assert classify_tool(p, ["x"]).limits.memory_max is None
    assert classify_tool(p, ["x"], mem_override="512Mi").limits.memory_max == 512 * MiB


@pytest.mark.parametrize("argv", [[], "pytest", [1, 2], None])
def test_bad_argv_is_a_request_error(policy, argv):
    with pytest.raises(RequestError) as info:
        classify_tool(policy, argv)
    assert info.value.code == "bad_argv"


@pytest.mark.parametrize("argv,expected", [
    (["/bin/bash", "-c", "-l"], True),          # Claude Code 2.0's shell snapshot
    (["bash", "-c", "env"], True),
    (["uname", "-p"], True),                    # mini-swe-agent's platform probe
    (["sh", "-c", "which node"], True),
    (["sh", "-c", "which python && pytest"], False),
    (["bash", "-c", "ls -la"], False),
    (["bash", "-c", "env | grep PATH"], False),
])
def test_housekeeping_defaults(argv, expected):
    p = load_policy("default", host_memory_bytes=HOST)
    assert is_housekeeping(p, argv) is expected
    builtin = load_policy_text("version: 1\n", "b.yaml", host_memory_bytes=HOST)
    assert is_housekeeping(builtin, argv) is expected


def test_housekeeping_from_policy():
    p = load_policy_text("version: 1\ndetection:\n  housekeeping: [{argv_regex: '^git (status|rev-parse)'}]\n",
                         "h.yaml", host_memory_bytes=HOST)
    assert is_housekeeping(p, ["git", "rev-parse", "HEAD"])
    assert not is_housekeeping(p, ["uname", "-p"])       # the policy's list replaces the built-in one


@pytest.mark.parametrize("name", ["default", "multi-tenant", "laptop"])
def test_shipped_policies_classify_common_calls(name):
    p = load_policy(name, host_memory_bytes=HOST)
    tests = classify_tool(p, ["bash", "-c", "cd /repo && python -m pytest -x tests/"])
    quick = classify_tool(p, ["bash", "-c", "git status"])
    assert tests.latency == "batch" and quick.latency == "interactive"
    assert quick.priority > tests.priority
    heavy_pipe = classify_tool(p, ["bash", "-c", "cat big.csv | python3 analyse.py"])
    assert heavy_pipe.latency != "interactive"


@given(st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_any_argv_classifies_without_crashing(argv):
    p = load_policy("default", host_memory_bytes=HOST)
    d = classify_tool(p, argv)
    assert d.class_name in p.tool_classes
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):     # not a VAR=value prefix
        assert command_programs(argv)[0] == os.path.basename(argv[0])


def test_one_shell_splitter_answers_for_policy_and_forecast_alike():
    """Policy matching and forecast signatures split a command string the same way: a
    here-document's body is the program's input, not commands, and `{ ...; }` groups."""
    from agentd.forecast.signature import signature
    from agentd.policy.match import command_programs, main_program
    heredoc = ["bash", "-c", "python3 << 'EOF'\nimport numpy\nfrom x import y\nEOF"]
    assert command_programs(heredoc) == ("bash", "python3")
    assert main_program(heredoc) == "python3" and signature(heredoc).program == "python"   # version dropped
    grouped = ["bash", "-c", "{ cd src; make -j4; }"]
    assert main_program(grouped) == signature(grouped).program == "make"
