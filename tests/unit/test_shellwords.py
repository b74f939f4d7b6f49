"""The shared shell tokenizer: shlex's splitting on ordinary input, linear and bounded on any."""

import shlex
import time

import pytest

from agentd import shellwords
from agentd.clip import clip_argv
from agentd.shellwords import ANALYSE_MAX_CHARS, bounded_argv, tokens


def shlex_tokens(text):
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace = " \t\r"
    lex.wordchars += "~-./*?=%+:@,[]{}^!$#"
    lex.commenters = ""
    return list(lex)


@pytest.mark.parametrize("text", [
    "cd x && pytest -q tests/",
    "bash -lc 'source ~/.snap && eval \"npm test\" < /dev/null && pwd -P >| /tmp/cwd'",
    "python3 -c \"print('a b')\" | tail -n 5; echo $?",
    "FOO=bar make -j4 2>&1 | tee log",
    "a\\ b 'c d' \"e \\\" f\" g''h",
    "for f in *.py; do black $f; done\nls",
    "cmd >> out 2>&1 &",
    "x=$(git rev-parse HEAD) && echo \"$x\"",
])
def test_same_tokens_as_shlex_on_ordinary_commands(text):
    assert tokens(text) == shlex_tokens(text)


def test_cut_off_quote_is_closed():
    assert tokens('echo "unterminated str') == ["echo", "unterminated str"]
    assert tokens("echo 'half") == ["echo", "half"]
    assert tokens("echo x\\") == ["echo", "x"]


def test_hostile_input_is_bounded_and_fast():
    text = '"' + "a" * 250_000 + "b" * 250_000 + "\\"
    t0 = time.process_time()
    out = tokens(text)
    assert time.process_time() - t0 < 0.5
    assert len(out) == 1 and len(out[0]) < ANALYSE_MAX_CHARS


def test_bounded_argv_and_clip_agree():
    argv = ["bash", "-c", "pytest -q " + "x" * 200_000, "tail"] + ["a"] * 100
    head = bounded_argv(argv)
    assert sum(len(a) + 1 for a in head) <= ANALYSE_MAX_CHARS + 1
    clipped = clip_argv(argv)
    assert clipped[2].endswith(f"...[cut: {len(argv[2])} chars]")
    assert clipped[-1] == f"...[{len(argv) - 3} more args, {sum(len(a) for a in argv[3:])} chars]"
    # A clipped argv (what history records) reads the same as the whole one (a forecast).
    assert bounded_argv(clipped) == head
    assert clip_argv(["ls", "-l"]) == ["ls", "-l"]


def test_analysis_of_a_huge_argv_is_fast():
    from agentd.forecast.signature import signature
    from agentd.policy.match import main_program
    argv = ["eval", '"' + "a" * 125_000, "b" * 125_000 + "\\"]
    t0 = time.process_time()
    main_program(argv)
    signature(argv)
    assert time.process_time() - t0 < 0.5
    assert shellwords.ANALYSE_MAX_ARGS >= 16
