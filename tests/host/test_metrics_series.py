"""The series a real daemon exposes stay bounded while tool calls come and go: no label
carries a count, an id or anything else that changes per tool call."""

import re
import socket
import time
import urllib.request

from tests.helpers import DaemonProc, kill_tree


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def series(url):
    """{(sample name, sorted labels)} of one scrape, and the samples' values by name."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    keys, values = set(), {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        keys.add((m.group(1), labels))
        values.setdefault(m.group(1), []).append((dict(labels), float(m.group(3))))
    return keys, values


def finished(values):
    return sum(v for _, v in values.get("agentd_tool_calls_finished_total", []))


def scrape_after(url, calls, timeout=30):
    """The scrape once `calls` tool calls have finished (the sweep finishes detected ones)."""
    deadline = time.monotonic() + timeout
    while True:
        keys, values = series(url)
        if finished(values) >= calls or time.monotonic() > deadline:
            assert finished(values) == calls, values.get("agentd_tool_calls_finished_total")
            return keys, values
        time.sleep(0.2)


def test_series_do_not_grow_with_detected_tool_calls(tmp_path, test_root):
    port = free_port()
    d = DaemonProc(str(tmp_path), test_root, metrics=f"127.0.0.1:{port}").start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        # Each `sh -c` the agent's bash forks and execs is an automatically detected call.
        agent = 'for ((i = 0; i < $1; i++)); do sh -c "exit 0"; done; true'
        r = d.run(agent, "3", name="card")
        assert r.returncode == 0, r.stderr
        before, values = scrape_after(url, 3)
        assert ("agentd_mode_info", (("component", "detection"), ("mode", "bpf-stop"))) in before, \
            sorted(k for k in before if k[0] == "agentd_mode_info")
        assert dict(values["agentd_autodetect_total"][0][0]) and \
            {lab["event"]: v for lab, v in values["agentd_autodetect_total"]}["placed"] == 3

        n = 20
        r = d.run(agent, str(n), name="card")
        assert r.returncode == 0, r.stderr
        after, values = scrape_after(url, 3 + n)
        assert {lab["event"]: v for lab, v in values["agentd_autodetect_total"]}["placed"] == 3 + n
        assert after - before == set(), f"series born from {n} tool calls: {sorted(after - before)}"
        assert len(before | after) == len(before)
    finally:
        d.cleanup()


def test_every_off_word_starts_the_daemon_without_metrics(tmp_path, test_root, cgfs):
    for word in ("off", "disabled", "none"):
        # One daemon after the other, each owning the test's root in turn.
        d = DaemonProc(str(tmp_path / word), test_root, metrics=word)
        (tmp_path / word).mkdir()
        try:
            d.start()
            assert d.request({"op": "hello"})["ok"]
            log = d.log()
            assert "metrics on" not in log and "Traceback" not in log, log
        finally:
            d.cleanup()
            kill_tree(cgfs, test_root)
