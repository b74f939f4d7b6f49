"""Split a shell command line into the simple commands it runs.

Agents hand agentd either an argv (`["bash", "-c", "cd x && pytest"]`) or the command string
their Bash tool ran. What predicts a tool call's memory is the program doing the work, not the
shell around it, so this module peels the shell off: it tokenises a command string the way
POSIX sh would (quotes, `&&`, `||`, `;`, `|`, `&`, newlines, redirections), unwraps
`bash -c`/`sh -c` and `eval '...'` (Claude Code wraps every command as
`bash -c 'source <snapshot> && eval '<cmd>' < /dev/null && pwd -P >| <file>'`), drops leading
`VAR=value` assignments and redirections, and returns every simple command with a note of
whether it was the first stage of a pipeline.

It is a tokeniser, not a shell: no expansion, no functions, no control flow (`if`, `for`,
`while` keywords are dropped so the commands inside them still count). Agents' tool logs cut
long commands (the shared traces keep 300 characters), so an unbalanced quote is closed
rather than refused. A here-document's body is returned separately: for `python3 << EOF`
the body is the program and its imports predict memory.
"""

import re
from dataclasses import dataclass

from .. import shellwords

# Operators that end a simple command. `|` additionally marks the next command as a later
# pipeline stage; the others start a new pipeline.
_SEPARATORS = {"&&", "||", ";", "&", "\n", ";;", "(", ")"}
_PIPE = {"|", "|&"}
# Redirection operators as shlex(punctuation_chars=True) emits them; the word after one is
# its target, not an argument.
_REDIRECTS = {">", ">>", "<", ">|", "<>", ">&", "<&", "&>", "&>>", "<<<"}
_HEREDOC = {"<<", "<<-"}
# Shell keywords that wrap commands rather than being commands.
_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "for", "while", "until",
             "case", "esac", "in", "!", "time", "function", "{", "}"}
_LOOP_HEADERS = {"for", "case", "select"}
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FD_REDIRECT_RE = re.compile(r"^\d*(>>?|<|>&|<&|>\|)\S*$")
_SHELLS = {"bash", "sh", "zsh", "dash", "ksh"}
# How deep `bash -c "eval 'sh -c ...'"` nesting is followed; deeper is not seen in practice.
MAX_DEPTH = 4


@dataclass(frozen=True)
class SimpleCommand:
    argv: tuple
    first_stage: bool      # first command of its pipeline (the producer in `cmd | tail`)
    stdin_script: str = ""  # here-document body fed to this command, if any


def _tokens(text):
    """Words and operators of `text`; a cut-off quote is closed (shellwords: linear, bounded)."""
    return shellwords.tokens(text)


_HEREDOC_RE = re.compile(r"<<-?[ \t]*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def _split_heredocs(text):
    """(text without here-document bodies, [bodies in order]).

    Only a `<<` outside quotes starts a here-document: inside `eval '...'` or `bash -c "..."`
    it belongs to the inner script, which is split again when that is unwrapped."""
    lines = text.split("\n")
    out, bodies, quote = [], [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        delims, k = [], 0
        while k < len(line):
            c = line[k]
            if quote:
                if c == quote:
                    quote = None
                elif c == "\\" and quote == '"':
                    k += 1
            elif c == "\\":
                k += 1
            elif c in "'\"":
                quote = c
            elif line.startswith("<<", k) and not line.startswith("<<<", k):
                m = _HEREDOC_RE.match(line, k)
                if m:
                    delims.append(m.group(2))
                    k = m.end() - 1
            k += 1
        for word in delims:          # bodies follow the line, in the order of their `<<`
            body = []
            while i < len(lines) and lines[i].strip() != word:
                body.append(lines[i])
                i += 1
            i += 1                   # the terminator line
            bodies.append("\n".join(body))
    return "\n".join(out), bodies


def shell_script(argv):
    """The script of `bash -c SCRIPT` / `sh -lc SCRIPT`, or None if argv is not that."""
    if not argv or argv[0].rsplit("/", 1)[-1] not in _SHELLS:
        return None
    for i, a in enumerate(argv[1:], 1):
        if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:
            return argv[i + 1] if i + 1 < len(argv) else ""
        if not a.startswith("-"):
            return None             # `bash script.sh`: a script file, a command of its own
    return None


def split_command(command, depth=0):
    """Simple commands of a command string, in order, wrappers unwrapped."""
    text, bodies = _split_heredocs(shellwords.bounded(command))
    toks = _tokens(text)
    result, cur, first, body_for_cur = [], [], True, ""
    i = 0

    def flush(next_first):
        nonlocal cur, first, body_for_cur
        if cur:
            result.extend(_expand(tuple(cur), first, body_for_cur, depth))
        cur, first, body_for_cur = [], next_first, ""

    while i < len(toks):
        t = toks[i]
        if t in _PIPE:
            flush(False)
        elif t in _SEPARATORS:
            flush(True)
        elif t in _REDIRECTS or t in _HEREDOC:
            if cur and cur[-1].isdigit():
                cur.pop()           # the `2` of `2>&1` (shlex splits it off the operator)
            if t in _HEREDOC and bodies:
                body_for_cur = bodies.pop(0)
            i += 1                  # the redirection target or here-document delimiter
        elif _FD_REDIRECT_RE.match(t) and any(c in t for c in "<>"):
            pass                    # `2>&1`-style tokens glued together
        elif not cur and t in _LOOP_HEADERS:
            while i + 1 < len(toks) and toks[i + 1] not in _SEPARATORS:
                i += 1              # `for f in *.py` / `case $x in`: a header, not a command
        elif not cur and (t in _KEYWORDS or _ASSIGN_RE.match(t)):
            pass                    # env assignments and keywords before the program
        else:
            cur.append(t)
        i += 1
    flush(True)
    return result


def _expand(argv, first, body, depth):
    """Unwrap shell-in-shell commands; other commands are returned as they are."""
    if depth < MAX_DEPTH:
        script = shell_script(argv)
        if script is not None:
            return split_command(script, depth + 1)
        if argv[0] == "eval":
            return split_command(" ".join(argv[1:]), depth + 1)
    return [SimpleCommand(argv, first, body)]
