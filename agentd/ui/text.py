"""Text that reaches a terminal: what agents wrote (argv, intent, cwd) shown safely.

argv and the other fields a client sends are bytes an agent chose. Printed raw, an
escape sequence in them would drive the reader's terminal (retitle it, rewrite earlier
lines, hide text), and a newline would forge a line of agentd's own output. Every
place that prints such text for people (status, top, events, report, the feedback
sentences on an agent's stderr) passes it through `printable`, which shows each
control character as a visible escape instead. JSON output needs nothing: json.dumps
escapes them itself.
"""

import re

# C0 controls, DEL and C1 controls (U+009B is a CSI on its own in some terminals); the
# Unicode bidirectional controls, which reorder what is shown; lone surrogates, which
# cannot be encoded to the terminal at all and would make print() raise.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape(m):
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text):
    """`text` (any value: str() of it) with every control character shown as an escape."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))
