"""Attacks on what agentd shows, writes and keeps, tried for real against a daemon.

Each test is named `test_attack_<row>_<what>` after the attack it reproduces
(bench/reliability.py collects them by that name into its table). Where the attacker
is another local user, a real unprivileged user is created for the test and removed
after it.
"""

import itertools
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers import DaemonProc, agentd_cmd, python_cmd

_users = itertools.count()

# An escape sequence that retitles the terminal, one that clears it, and a colour.
OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
RED = "\x1b[31m"


@pytest.fixture
def make_user():
    """make_user() -> (name, uid, gid) of a new unprivileged user; all removed after."""
    made = []

    def make():
        name = f"agtm{os.getpid()}x{next(_users)}"
        subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        made.append(name)
        pw = pwd.getpwnam(name)
        return name, pw.pw_uid, pw.pw_gid

    yield make
    for name in made:
        subprocess.run(["userdel", name], capture_output=True)
        assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"user {name} left behind"


def as_user(uid, gid, argv, **kw):
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60, **kw)


def _agentd(daemon, *args, **kw):
    return subprocess.run(agentd_cmd() + list(args), capture_output=True, text=True, env=daemon.env,
                          timeout=60, **kw)


def _cli(daemon, *args):
    """The Python CLI (status, events, top are not the C front's)."""
    return subprocess.run(python_cmd() + list(args), capture_output=True, text=True, env=daemon.env,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


# --- 11: terminal escape sequences in argv -------------------------------------------
@pytest.fixture
def short_dir():
    """A folder with a short path (status cuts long command lines to the width)."""
    d = tempfile.mkdtemp(prefix="ag-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_attack_11_terminal_escapes_in_argv_are_shown_escaped(daemon, short_dir):
    """An agent's argv carries escape sequences (and a newline that would forge a line).
    status, top and events show them as visible escapes; the feedback sentence on the
    agent's stderr, which names the program, too. Nothing raw reaches a terminal."""
    # A program whose name is an escape sequence, leaving a background process behind
    # (so agentd tells the agent about it, naming the program).
    import pathlib
    tmp_path = pathlib.Path(short_dir)
    prog = tmp_path / f"{OSC_TITLE}{CLEAR}evil"
    prog.write_text("#!/bin/sh\nsleep 30 >/dev/null 2>&1 &\nexit 0\n")
    prog.chmod(0o755)
    slow = tmp_path / f"{RED}slow"
    slow.write_text("#!/bin/sh\nsleep 4\n")
    slow.chmod(0o755)
    arg = f"{RED}red\nforged line{OSC_TITLE}"

    # A running call for status and top.
    running = subprocess.Popen(agentd_cmd() + ["run", "--name", "escr", "--"] + agentd_cmd()
                               + ["tool", "--", str(slow), arg], env=daemon.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        status = ""
        while time.monotonic() < deadline and "slow" not in status:
            status = _cli(daemon, "status").stdout
            time.sleep(0.2)
        assert "slow" in status, status
        top = _cli(daemon, "top", "--once").stdout
        assert "slow" in top
        for out in (status, top):
            assert "\x1b" not in out and "\x07" not in out
            assert "\\e[31mslow" in out
            assert not any(line.startswith("forged line") for line in out.splitlines())
    finally:
        running.wait(30)

    r = _agentd(daemon, "run", "--name", "esc", "--", *agentd_cmd(), "tool", "--", str(prog), arg)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    # The sentence is there, with the program's name escaped.
    assert "background process(es) left by \\e]0;pwned\\x07\\e[2J\\e[Hevil" in r.stderr, r.stderr

    ev = _cli(daemon, "events", "--event-log", daemon.event_log, "--type", "tool_start")
    assert ev.returncode == 0, ev.stderr
    assert "evil" in ev.stdout and "slow" in ev.stdout
    assert "\x1b" not in ev.stdout and "\x07" not in ev.stdout
    assert "\\e[31mred\\nforged line" in ev.stdout
    assert not any(line.startswith("forged line") for line in ev.stdout.splitlines())
    # The JSON form keeps the exact argv (json escapes control characters itself).
    js = _cli(daemon, "events", "--event-log", daemon.event_log, "--type", "tool_start", "--json")
    assert "\x1b" not in js.stdout and "\\u001b[31mred\\nforged line" in js.stdout


# --- 12: the feedback file as a way to write root's files --------------------------------
@pytest.mark.parametrize("front", ["launcher", "python"])
def test_attack_12_feedback_file_symlink_to_root_file_is_refused(daemon, make_user, front):
    """Another user plants a symbolic link (in a folder of theirs under /tmp) named like a
    root agent's AGENTD_FEEDBACK_FILE, pointing at a root 0600 file. The root agent's tool
    call runs, the root file is untouched, and one line on stderr says why. A file of the
    other user's and a FIFO are refused the same way; the agent's own file is written."""
    if front == "launcher" and agentd_cmd()[0] != os.path.join(os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))), "agentd", "_bin", "agentd"):
        pytest.fail("the C launcher is not built: python3 -m agentd._build")
    front_cmd = agentd_cmd() if front == "launcher" else python_cmd()
    name, uid, gid = make_user()
    secret_dir = tempfile.mkdtemp(prefix="agentd-secret-")
    attacker_dir = tempfile.mkdtemp(prefix="agentd-fb-")
    try:
        secret = os.path.join(secret_dir, "shadow")
        with open(secret, "w") as f:
            f.write("root only\n")
        os.chmod(secret, 0o600)
        os.chmod(secret_dir, 0o755)
        os.chown(attacker_dir, uid, gid)
        os.chmod(attacker_dir, 0o755)
        link = os.path.join(attacker_dir, "feedback.jsonl")
        theirs = os.path.join(attacker_dir, "theirs.jsonl")
        fifo = os.path.join(attacker_dir, "fifo")
        setup = as_user(uid, gid, [sys.executable, "-c",
                                   "import os,sys; os.symlink(sys.argv[1], sys.argv[2]); "
                                   "open(sys.argv[3], 'w').close(); os.mkfifo(sys.argv[4])",
                                   secret, link, theirs, fifo])
        assert setup.returncode == 0, setup.stderr
        before = os.stat(secret)
        for target, why in ((link, "symbolic link"), (theirs, f"belongs to uid {uid}"),
                            (fifo, None)):
            env = dict(daemon.env, AGENTD_FEEDBACK_FILE=target)
            r = subprocess.run(front_cmd + ["run", "--name", f"fb{front[0]}", "--"] + front_cmd
                               + ["tool", "--", "sh", "-c", "echo ran"], capture_output=True, text=True,
                               env=env, timeout=60)
            assert r.returncode == 0, r.stderr
            assert r.stdout == "ran\n"
            lines = [ln for ln in r.stderr.splitlines() if "tool-call result" in ln]
            assert len(lines) == 1, r.stderr
            assert lines[0].startswith(f"agentd: not writing the tool-call result to {target}: ")
            if why:
                assert why in lines[0]
        with open(secret) as f:
            assert f.read() == "root only\n"
        assert os.stat(secret).st_size == before.st_size
        assert os.path.getsize(theirs) == 0
        # The agent's own regular file is written: the check is not a refusal of all.
        own = os.path.join(secret_dir, "own.jsonl")
        r = subprocess.run(front_cmd + ["run", "--name", f"fo{front[0]}", "--"] + front_cmd
                           + ["tool", "--", "true"], capture_output=True, text=True,
                           env=dict(daemon.env, AGENTD_FEEDBACK_FILE=own), timeout=60)
        assert r.returncode == 0, r.stderr
        assert "tool-call result" not in r.stderr
        with open(own) as f:
            assert '"outcome"' in f.read()
        assert stat.S_IMODE(os.stat(own).st_mode) & 0o077 == 0
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
        shutil.rmtree(attacker_dir, ignore_errors=True)


# --- 13: the state of a daemon started by hand, read by another user ---------------------
def test_attack_13_state_dir_is_private_to_root(cgfs, test_root, make_user):
    """A daemon started outside systemd, with an existing state dir left 0755 with a
    0644 file in it (an older agentd's). After a tool call another user can read
    neither the state dir (history.sqlite has every agent's argv) nor the event log,
    yet can still connect to the socket; cgroup directories stay readable."""
    name, uid, gid = make_user()
    base = tempfile.mkdtemp(prefix="agentd-state-")
    os.chmod(base, 0o755)            # reachable by anyone, like /var/lib
    d = DaemonProc(base, test_root)
    # The socket in a folder that does not exist yet: the daemon makes it, reachable.
    d.socket = os.path.join(d.sock_dir, "run", "agentd.sock")
    d.env["AGENTD_SOCKET"] = d.socket
    os.makedirs(d.state_dir, mode=0o755)
    os.chmod(d.state_dir, 0o755)
    old = os.path.join(d.state_dir, "state.json")
    with open(old, "w") as f:
        f.write('{"version": 1, "agents": {}, "tools": {}}')
    os.chmod(old, 0o644)
    try:
        d.start()
        r = _agentd(d, "run", "--name", "secretive", "--", *agentd_cmd(), "tool", "--", "sh", "-c",
                    "true secret-token-in-argv")
        assert r.returncode == 0, r.stderr
        files = sorted(os.listdir(d.state_dir))
        assert "history.sqlite" in files, files
        assert stat.S_IMODE(os.stat(d.state_dir).st_mode) == 0o700
        for f in files:
            p = os.path.join(d.state_dir, f)
            assert stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0, (f, oct(os.stat(p).st_mode))
        assert stat.S_IMODE(os.stat(d.event_log).st_mode) & 0o077 == 0
        # The other user: nothing readable, the socket connectable.
        probe = ("import os,socket,sys,json\n"
                 "out=[]\n"
                 "for p in sys.argv[2:]:\n"
                 "    try:\n"
                 "        out.append(p if os.path.isdir(p) and os.listdir(p) is not None else open(p,'rb').read(1) and p)\n"
                 "    except PermissionError:\n"
                 "        pass\n"
                 "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                 "s.sendall(b'{\"v\":1,\"op\":\"hello\"}\\n'); r=json.loads(s.makefile().readline())\n"
                 "print(json.dumps({'readable': out, 'hello': r.get('ok')}))\n")
        targets = [d.state_dir] + [os.path.join(d.state_dir, f) for f in files] + [d.event_log]
        r = as_user(uid, gid, [sys.executable, "-c", probe, d.socket, *targets])
        assert r.returncode == 0, r.stderr
        import json
        got = json.loads(r.stdout)
        assert got == {"readable": [], "hello": True}, got
        assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o755
        agent_cg = cgfs.path(f"{test_root}/agents")
        assert stat.S_IMODE(os.stat(agent_cg).st_mode) == 0o755
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)
