"""printable(): what agents wrote, shown to people without driving their terminal."""

from agentd.api.feedback import messages_for
from agentd.ui.report import Call
from agentd.ui.table import event_line, status_lines
from agentd.ui.text import printable


def test_control_characters_become_visible_escapes():
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("\x1b]0;t\x07\x1b[2J") == "\\e]0;t\\x07\\e[2J"
    assert printable("a\nb\tc\rd\x00e\x7f") == "a\\nb\\tc\\rd\\x00e\\x7f"
    assert printable("\x9b31m") == "\\x9b31m"                       # C1 CSI
    assert printable("\u202eevil\u2066") == "\\u202eevil\\u2066"     # bidi overrides
    assert printable("\ud800") == "\\ud800"                         # unencodable lone surrogate
    assert printable(42) == "42"


def test_every_view_escapes_argv():
    argv = ["\x1b[31mevil", "x\ny"]
    line = event_line({"ts": 0, "event": "tool_start", "agent": "a", "tool": "t1", "tool_class": "batch",
                       "argv": argv})
    assert "\x1b" not in line and "\n" not in line and "\\e[31mevil x\\ny" in line
    other = event_line({"ts": 0, "event": "weird", "agent": "a", "intent": "\x1b]0;x\x07"})
    assert "\x1b" not in other and "\x07" not in other
    snap = {"agents": [{"agent": "a", "agent_class": "c", "tools": [
        {"tool": "t1", "tool_class": "batch", "argv": argv, "actions": []}]}]}
    lines = status_lines(snap)
    assert all("\x1b" not in ln and "\n" not in ln for ln in lines)
    assert any("\\e[31mevil" in ln for ln in lines)
    assert "\x1b" not in Call(agent="a", tool="t1", argv=argv).label


def test_feedback_sentences_escape_the_program_name():
    msgs = messages_for({"argv": ["/tmp/\x1b]0;pwned\x07x"], "outcome": "oom_killed",
                         "limits": {"memory.max": str(1 << 30)}, "actions": []})
    assert msgs and all("\x1b" not in m and "\x07" not in m for m in msgs)
    assert "\\e]0;pwned\\x07x" in msgs[0]
