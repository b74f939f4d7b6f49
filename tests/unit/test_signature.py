"""Signature normaliser: a table of literal command lines and what they must map to."""

import shlex

import pytest
from hypothesis import given, settings, strategies as st

from agentd.forecast.shell import split_command
from agentd.forecast.signature import Signature, signature

CLAUDE_WRAPPED = ("/bin/bash -c 'source /root/.claude/shell-snapshots/snapshot-bash-1.sh && "
                  "eval '\"'\"'pytest -x tests/a.py'\"'\"' \\< /dev/null && pwd -P >| /tmp/claude-1-cwd'")

# (command, full, coarse, program, default tool class)
CASES = [
    ("pytest", "pytest", "pytest", "pytest", "high"),
    ("pytest -x", "pytest", "pytest", "pytest", "high"),
    ("python -m pytest tests/x.py -k foo", "pytest -k tests/x.py", "pytest", "pytest", "high"),
    ("python3 -m pytest tests/x.py::TestA::test_b -xvs", "pytest tests/x.py", "pytest", "pytest", "high"),
    ("py.test -n 4 tests/", "pytest -n=4 tests", "pytest -n=4", "pytest", "high"),
    ("pytest -n auto tests/unit", "pytest -n=auto tests/unit", "pytest -n=auto", "pytest", "high"),
    ("pytest /testbed/pkg/sub/tests/test_x.py", "pytest sub/tests/test_x.py", "pytest", "pytest", "high"),
    ("pip install -e .", "pip install -e .", "pip install -e", "pip", "high"),
    ("pip3 install -r requirements.txt", "pip install -r requirements.txt", "pip install -r", "pip", "high"),
    ("python -m pip install numpy==1.26 'pandas>=2' --quiet", "pip install numpy pandas", "pip install", "pip", "high"),
    ("pip install pandas numpy", "pip install numpy pandas", "pip install", "pip", "high"),
    ("npm test", "npm test", "npm test", "npm", "high"),
    ("npm run build", "npm run build", "npm run build", "npm", "high"),
    ("yarn install", "yarn install", "yarn install", "yarn", "high"),
    ("cargo build --release", "cargo build --release", "cargo build --release", "cargo", "high"),
    ("cargo test -p core", "cargo test -p=core", "cargo test", "cargo", "high"),
    ("git status", "git status", "git status", "git", "low"),
    ("git -C /repo log --oneline -5", "git log", "git log", "git", "low"),
    ("timeout 60 pytest -q", "pytest", "pytest", "pytest", "high"),
    ("FOO=1 BAR=2 pytest", "pytest", "pytest", "pytest", "high"),
    ("env PYTHONPATH=src python -m pytest", "pytest", "pytest", "pytest", "high"),
    ("cd /testbed && python -m pytest tests/test_a.py", "pytest tests/test_a.py", "pytest", "pytest", "high"),
    ("python -m pytest tests/ 2>&1 | tail -20", "pytest tests", "pytest", "pytest", "high"),
    ("git log | head", "git log", "git log", "git", "low"),
    ("cat setup.py | python -", "python -", "python -", "python", "medium"),
    ("ls -la && cat README.md", "ls", "ls", "ls", "low"),
    (CLAUDE_WRAPPED, "pytest tests/a.py", "pytest", "pytest", "high"),
    ("sh -c 'make -j8 all'", "make all -j=8", "make all -j=8", "make", "high"),
    ("nice -n 10 make", "make", "make", "make", "high"),
    ('python -c "import numpy as np; import torch.nn"', "python -c import:numpy,torch", "python -c", "python", "medium"),
    ("python3 << 'EOF'\nimport pandas\nfrom sklearn import svm\nprint(1)\nEOF",
     "python - import:pandas,sklearn", "python -", "python", "medium"),
    ("python setup.py develop", "python setup.py", "python <script>", "python", "medium"),
    ("/usr/bin/python3.11 tools/gen.py --out x", "python tools/gen.py", "python <script>", "python", "medium"),
    ("source venv/bin/activate && pip install -e . 2>&1 | tail -5", "pip install -e .", "pip install -e", "pip", "high"),
    ("echo done", "echo", "echo", "echo", "low"),
    ("", "", "", "", "low"),
    ("uv run pytest tests", "pytest tests", "pytest", "pytest", "high"),
    ("poetry run python -m pytest", "pytest", "pytest", "pytest", "high"),
    ("npx jest --runInBand src", "jest --runInBand src", "jest --runInBand", "jest", "high"),
    ("grep -rn foo src | wc -l", "grep", "grep", "grep", "low"),
    ('python -c "print(1', "python -c", "python -c", "python", "medium"),   # cut-off log line
    ("for f in *.py; do python $f; done", "python $f", "python <script>", "python", "medium"),
    ("docker build -t x .", "docker build .", "docker build", "docker", "high"),
    ("some-unknown-tool --flag", "some-unknown-tool", "some-unknown-tool", "some-unknown-tool", "medium"),
]


@pytest.mark.parametrize("command,full,coarse,program,cls", CASES, ids=[c[0][:40] for c in CASES])
def test_signature_table(command, full, coarse, program, cls):
    assert signature(command) == Signature(full, coarse, program, cls)


@pytest.mark.parametrize("argv,expected", [
    (["bash", "-lc", "cd x && pytest -q"], "pytest"),
    (["pytest", "-x", "tests/a.py"], "pytest tests/a.py"),
    (["timeout", "60", "python", "-m", "pytest"], "pytest"),
    (["/bin/sh", "-c", "git status | cat"], "git status"),
    (["python3", "-c", "import json"], "python -c import:json"),
])
def test_argv_lists(argv, expected):
    assert signature(argv).full == expected


def test_levels_go_fine_to_coarse():
    sig = signature("python -m pytest -n 4 tests/test_a.py -k slow")
    assert sig.levels() == ("pytest -n=4 -k tests/test_a.py", "pytest -n=4", "pytest")


def test_signature_is_hashable_and_frozen():
    sig = signature("git status")
    assert {sig: 1}[signature(["git", "status"])] == 1
    with pytest.raises(AttributeError):
        sig.full = "x"


def test_heaviest_stage_wins_over_order():
    # the interpreter does the work even when a light command comes first in the pipe
    assert signature("cat data.csv | python analyse.py").program == "python"
    # among equals the first pipeline stage (the producer) wins
    assert signature("pytest -q | tee log.txt").program == "pytest"


def test_split_command_drops_redirections_and_assignments():
    cmds = split_command("A=1 python x.py 2>&1 > out.txt | tail -5")
    assert [c.argv for c in cmds] == [("python", "x.py"), ("tail", "-5")]
    assert [c.first_stage for c in cmds] == [True, False]


def test_heredoc_inside_claude_wrapper_belongs_to_the_inner_script():
    inner = "cat > /tmp/t.py << EOF\nimport numpy\nEOF\npython /tmp/t.py"
    argv = ["/bin/bash", "-c", "source snap.sh && eval " + shlex.quote(inner) + " < /dev/null && pwd -P"]
    assert signature(argv).full == "python tmp/t.py"
    inner = "python3 << 'EOF'\nimport torch\nprint(\"it's\")\nEOF"
    argv = ["/bin/bash", "-c", "source snap.sh && eval " + shlex.quote(inner) + " < /dev/null && pwd -P"]
    assert signature(argv).full == "python - import:torch"


def test_heredoc_body_is_attached_to_its_command():
    cmds = split_command("cat > /tmp/a.py << 'EOF'\nimport os\nEOF\npython /tmp/a.py")
    assert cmds[0].argv == ("cat",) and cmds[0].stdin_script == "import os"
    assert cmds[1].argv == ("python", "/tmp/a.py")

_SHELLISH = st.lists(st.sampled_from(list("ab -|&;<>'\"\\$()=\n/.:x1") +
                                    ["pytest", "bash -c ", "eval ", "<<EOF", "python -c ", "timeout "]),
                     max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), _SHELLISH, st.lists(st.text(max_size=10), max_size=6)))
def test_any_input_gives_a_signature(cmd):
    # agents' logs cut commands anywhere; a signature must never raise
    sig = signature(cmd)
    assert sig.full.startswith(sig.program)
    assert sig.tool_class in ("low", "medium", "high")
