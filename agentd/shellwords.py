"""One linear, bounded tokenizer for shell command strings, shared by policy matching and
forecasting.

A tool call's argv comes from the agent, that is from code agentd does not trust, and is
analysed on the daemon's event loop. `shlex` cannot be that tokenizer: it raises on an
unbalanced quote or a trailing backslash, and a caller that retries with closing quotes
rescans the whole string each time (a 250 KB `eval "...\\` cost seconds per request).
This one reads each character once, never raises, and closes a cut-off quote at the end
(agents' logs cut long commands, so a cut is normal input). Only the first
`ANALYSE_MAX_CHARS` of a text are read at all: what predicts a call's memory and class is
at the start of its command line, and a bound on the input bounds the time.

Tokens follow POSIX sh quoting (single quotes literal; in double quotes a backslash escapes
only `"`, `\\`, `$` and a backquote; outside quotes it escapes any character), the way
shlex(posix=True, punctuation_chars=";&|()<>") splits: a run of operator characters is one
token (`&&`, `2>&1` gives `2`, `>&`, `1`), a newline is a token of its own (it separates
commands), spaces, tabs and carriage returns separate words.
"""

ANALYSE_MAX_CHARS = 4096      # of one command string
ANALYSE_MAX_ARGS = 64         # argv items looked at
_OPERATOR_CHARS = frozenset(";&|()<>")
_BLANK = frozenset(" \t\r")


def bounded(text, limit=ANALYSE_MAX_CHARS):
    """The part of `text` analysis reads."""
    return text if len(text) <= limit else text[:limit]


def bounded_argv(argv, max_args=ANALYSE_MAX_ARGS, max_chars=ANALYSE_MAX_CHARS):
    """The part of an argv analysis reads, as a tuple (hashable, cheap to cache): at most
    `max_args` items and `max_chars` characters in all, the last item cut to fit."""
    out, left = [], max_chars
    for a in argv[:max_args]:
        if left <= 0:
            break
        a = a[:left]
        out.append(a)
        left -= len(a) + 1
    return tuple(out)


def tokens(text):
    """Words and operators of `text` (its first ANALYSE_MAX_CHARS), in one pass."""
    text = bounded(text)
    out = []
    word = []            # characters of the word being read
    in_word = False      # a word has started ("" counts: `''` is an empty word)
    op = []              # characters of the operator being read
    quote = None
    i, n = 0, len(text)

    def end_word():
        nonlocal in_word
        if in_word:
            out.append("".join(word))
            word.clear()
            in_word = False

    def end_op():
        if op:
            out.append("".join(op))
            op.clear()

    while i < n:
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                word.append(c)
        elif quote == '"':
            if c == '"':
                quote = None
            elif c == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                i += 1
                word.append(text[i])
            else:
                word.append(c)
        elif c in _OPERATOR_CHARS:
            end_word()
            op.append(c)
        else:
            end_op()
            if c in _BLANK:
                end_word()
            elif c == "\n":
                end_word()
                out.append("\n")
            elif c in "'\"":
                quote = c
                in_word = True
            elif c == "\\":
                if i + 1 < n:
                    i += 1
                    word.append(text[i])
                    in_word = True
            else:
                word.append(c)
                in_word = True
        i += 1
    end_op()
    end_word()           # a quote still open at the end is closed here
    return out
