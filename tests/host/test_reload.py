"""Policy reload on a live daemon: a bad policy keeps the last good one and says why."""

import os
import signal
import time

from tests.helpers import DaemonProc

GOOD = """
version: 1
tool_classes:
  normal: {priority: 50}
  heavy: {priority: 10}
tool_rules:
  - {name: sleeps, match: {program: [sleep]}, class: %s}
"""


def _class_of_next_call(d, name):
    r = d.run('"$@" tool -- sleep 0', *_front(), name=name)
    assert r.returncode == 0, r.stderr
    ev = d.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == name)
    return ev["tool_class"]


def _front():
    from tests.helpers import agentd_cmd
    return agentd_cmd()


def test_bad_reload_keeps_last_good_policy(tmp_path, test_root):
    pol = tmp_path / "p.yaml"
    pol.write_text(GOOD % "heavy")
    d = DaemonProc(str(tmp_path), test_root, policy=str(pol)).start()
    try:
        assert _class_of_next_call(d, "r1") == "heavy"
        pol.write_text(GOOD % "heavy" + "  - {name: broken, match: {argv_regex: '(unclosed'}, class: heavy}\n")
        r = d.request({"op": "reload"})
        assert r["ok"] is False and r["error"]["code"] == "reload_failed"
        assert "p.yaml:8" in r["error"]["message"] and "argv_regex" in r["error"]["message"]
        assert _class_of_next_call(d, "r2") == "heavy"          # old policy still in force
        # SIGHUP reloads too; a good file takes effect.
        pol.write_text(GOOD % "normal")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_event(lambda e: e["event"] == "reload" and e.get("ok") is True)
        assert _class_of_next_call(d, "r3") == "normal"
        assert any(e["event"] == "reload" and e.get("ok") is False for e in d.events())
        assert "reload failed, keeping the previous policy" in d.log()
    finally:
        d.cleanup()
