"""The command line's own checks: the metrics listen address and how policy errors print."""

import subprocess
import sys

import pytest

from agentd import cli
from agentd.errors import PolicyError
from agentd.policy.loader import load_policy_text
from tests.helpers import REPO


@pytest.mark.parametrize("word", ["off", "none", "disabled", "OFF", "None", ""])
def test_every_off_word_turns_metrics_off_on_the_command_line_and_in_a_policy(word):
    for command in ("daemon", "run"):
        args = cli.build_parser().parse_args([command, "--metrics-listen", word])
        assert args.metrics_listen == "", (command, word)
    p = load_policy_text(f'version: 1\ndaemon: {{metrics_listen: "{word}"}}\n', "p.yaml", host_memory_bytes=2**34)
    assert p.daemon.metrics_listen == ""


def test_addresses_pass_through_and_nothing_means_the_policy():
    assert cli.build_parser().parse_args(["daemon", "--metrics-listen", "127.0.0.1:9464"]).metrics_listen == \
        "127.0.0.1:9464"
    assert cli.build_parser().parse_args(["daemon"]).metrics_listen is None
    assert cli.build_parser().parse_args(["run", "--", "true"]).metrics_listen is None


def test_a_bad_listen_address_is_one_clear_error_before_anything_starts():
    r = subprocess.run([sys.executable, "-m", "agentd", "daemon", "--metrics-listen", "localhost"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "agentd daemon: error: argument --metrics-listen: bad listen address 'localhost': expected HOST:PORT "
        "(e.g. 127.0.0.1:9464, :9464) or off, none, disabled for no metrics endpoint")


def test_a_policy_error_of_one_message_is_one_problem():
    err = PolicyError("metrics listen address 'x': expected HOST:PORT")
    assert err.problems == ["metrics listen address 'x': expected HOST:PORT"]
    assert str(err) == "metrics listen address 'x': expected HOST:PORT"


def test_invalid_policy_prints_one_problem_per_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagent_classes:\n  normal: {priority: 5000}\ndaemon: {metrics_listen: nowhere}\n")
    assert cli.main(["policy", "check", str(bad)]) == 1
    assert capsys.readouterr().out == (
        f"{bad}:3: agent_classes.normal.priority: priority 5000 is out of range: expected 0..1000\n"
        f"{bad}:4: daemon.metrics_listen: bad listen address 'nowhere': expected HOST:PORT (e.g. 127.0.0.1:9464, "
        f":9464) or off, none, disabled for no metrics endpoint\n")

    # A PolicyError made from one message (as the metrics endpoint's address check raises)
    # prints as that one line, not one character per line.
    def doctor(args):
        from agentd.metrics import parse_listen
        parse_listen("nowhere")
    monkeypatch.setattr(cli, "cmd_doctor", doctor)
    assert cli.main(["doctor"]) == 1
    assert capsys.readouterr().err == (
        "agentd: invalid policy:\nmetrics listen address 'nowhere': expected HOST:PORT, e.g. 127.0.0.1:9464\n")


def test_the_daemon_refuses_an_invalid_policy_with_each_problem_on_its_own_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagent_classes:\n  normal: {priority: 5000}\ntool_rules:\n"
                   "  - {name: t, match: {program: [x]}, class: nope}\n")
    r = subprocess.run([sys.executable, "-m", "agentd", "daemon", "--policy", str(bad), "--root", "agentd-never",
                        "--metrics-listen", "off"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (
        "agentd: invalid policy:\n"
        f"{bad}:3: agent_classes.normal.priority: priority 5000 is out of range: expected 0..1000\n"
        f"{bad}:5: tool_rules[0].class: unknown tool class 'nope'; built in: batch, "
        "interactive, normal\n")


def test_standalone_history_lives_in_the_state_dir_for_root_else_the_xdg_state_dir():
    from agentd.standalone import standalone_state_dir
    assert standalone_state_dir("/var/lib/agentd", euid=0, environ={}) == "/var/lib/agentd"
    assert standalone_state_dir("/var/lib/agentd", euid=1000, environ={"XDG_STATE_HOME": "/x/state",
                                                                       "HOME": "/home/u"}) == "/x/state/agentd"
    assert standalone_state_dir("/var/lib/agentd", euid=1000, environ={"HOME": "/home/u"}) == \
        "/home/u/.local/state/agentd"
