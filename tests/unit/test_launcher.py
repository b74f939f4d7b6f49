"""The C launcher's `agentd tool` against a scripted stand-in for the daemon.

FakeDaemon speaks the daemon's side of API v1 (agentd/api/protocol.py) over a real
unix socket, checks what the real daemon checks about the waiting child (its
parent is the peer, it has not exec'd yet), and answers as each test scripts it.
The real daemon is exercised by the host tests and bench/overhead.py.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from agentd._build import build_launcher

ENV_OK = {"AGENTD_TOOL": "a1/0007-batch"}


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    # -Werror: a warning in the launcher is a bug in code that runs on every tool call.
    # AGENTD_TEST_LAUNCHER_CFLAGS="-fsanitize=address,undefined" runs these tests on a sanitizer build.
    flags = ("-Werror", *os.environ.get("AGENTD_TEST_LAUNCHER_CFLAGS", "").split())
    return str(build_launcher(out=tmp_path_factory.mktemp("launcher") / "agentd", extra_cflags=flags))


def _read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


class FakeDaemon:
    """A scripted daemon. Every request is recorded in .requests (parsed JSON).

    tool_start is answered with `start` (plus "path": cgroup_dir, None by default so
    the launcher uses the held child and tool_attach); tool_attach is answered with
    `attach` after `delay` seconds, having checked the child like the real daemon.
    """

    def __init__(self, path, start=None, attach=None, done=None, notices=(), running_notices=(), delay=0.0,
                 start_delay=0.0, cgroup_dir=None, drop_after_start=False, restart_after=None):
        self.path = path
        self.start_reply = start if start is not None else {
            "ok": True, "agent": "a1", "tool": "0007-batch", "env": ENV_OK, "messages": [],
            "cgroup": "x/agents/a1/tools/0007-batch", "extra": {"n": [1, -2.5e3, {"k": None}], "b": False}}
        self.start_reply = dict(self.start_reply, path=cgroup_dir)
        self.attach_reply = attach if attach is not None else {"ok": True}
        self.done_reply = done if done is not None else {
            "ok": True, "messages": ["[agentd] tool call done"], "result": {"tool": "0007-batch", "peak": 123}}
        self.notices, self.running_notices = list(notices), list(running_notices)
        self.delay, self.start_delay = delay, start_delay
        self.drop_after_start, self.restart_after = drop_after_start, restart_after
        self.requests, self.checks, self.errors = [], [], []
        self.connections = 0
        self._stop = threading.Event()
        self._conns = []
        self._listen()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _listen(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self.sock.settimeout(0.05)

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _send(self, conn, obj):
        conn.sendall((json.dumps({"v": 1, **obj}) + "\n").encode())

    def _serve(self, conn):
        peer_pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line.decode("utf-8"))   # strict: invalid UTF-8 or JSON fails here
                    self.requests.append(req)
                    if req["op"] == "tool_start":
                        for n in self.notices:
                            self._send(conn, {"notice": "queued", "message": n})
                        time.sleep(self.start_delay)
                        self._send(conn, self.start_reply)
                        placed = self.start_reply.get("ok") and self.start_reply.get("path")
                    elif req["op"] == "tool_attach":
                        self._attach(conn, req, peer_pid)
                        placed = self.attach_reply.get("ok")
                    elif req["op"] == "tool_done":
                        self._send(conn, self.done_reply)
                        placed = False
                    if placed and not self._running(conn):
                        return
        except (BrokenPipeError, ConnectionResetError):
            pass                          # the launcher went away (a cancelled call)
        except Exception as err:          # reported by the test through .errors
            self.errors.append(repr(err))
        finally:
            conn.close()

    def _attach(self, conn, req, peer_pid):
        pid = req["pid"]
        stat = _read_proc(pid, "stat") or b""
        ppid = int(stat.rsplit(b")", 1)[1].split()[1]) if stat else None
        check = {"pid": pid, "ppid": ppid, "peer": peer_pid, "cmdline_at_request": _read_proc(pid, "cmdline")}
        time.sleep(self.delay)
        check["cmdline_before_reply"] = _read_proc(pid, "cmdline")
        self.checks.append(check)
        self._send(conn, self.attach_reply)

    def _running(self, conn):
        """The tool call is placed and CMD runs: push notices, or vanish like a restart."""
        for n in self.running_notices:
            self._send(conn, {"notice": "throttled", "message": n})
        if self.drop_after_start:
            return False
        if self.restart_after is not None:
            conn.close()
            self._restart()
            return False
        return True

    def _restart(self):
        """Like a daemon restart: the socket vanishes for a while, then serves again."""
        self.sock.close()
        os.unlink(self.path)
        time.sleep(self.restart_after)
        self._listen()

    def tool_requests(self, op):
        return [r for r in self.requests if r["op"] == op]

    def close(self):
        self._stop.set()
        self._thread.join()
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def sockdir():
    # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="agentd-lt-", dir="/tmp")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


@pytest.fixture
def fake(sockdir):
    daemons = []

    def make(**kw):
        d = FakeDaemon(os.path.join(sockdir, "agentd.sock"), **kw)
        daemons.append(d)
        return d
    yield make
    for d in daemons:
        d.close()
        assert not d.errors, d.errors


def run_tool(launcher, daemon_path, *cmd, opts=(), env=None, **kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    e.update(AGENTD_SOCKET=daemon_path, **(env or {}))
    return subprocess.run([launcher, "tool", *opts, "--", *cmd], capture_output=True, env=e, timeout=30, **kw)


def test_request_fields_and_escaping(launcher, fake, tmp_path):
    d = fake()
    args = ['q"uote', "back\\slash", "nl\nt\tr\r", "ctl\x01\x1f\x7f", "é✓😀", b"bad\xff\xfe", b"\xc0\xaf", b""]
    cwd = tmp_path / 'dir "x"\n'
    cwd.mkdir()
    p = run_tool(launcher, d.path, "true", *args, opts=("--class=build", "--mem", "2Gi", "--intent", "why\x02"),
                 cwd=cwd)
    assert p.returncode == 0, p.stderr
    (req,) = d.tool_requests("tool_start")
    assert req["v"] == 1 and "pid" not in req       # the daemon makes the cgroup first
    (att,) = d.tool_requests("tool_attach")
    assert (att["agent"], att["tool"]) == ("a1", "0007-batch") and isinstance(att["pid"], int)
    assert req["argv"] == ["true", 'q"uote', "back\\slash", "nl\nt\tr\r", "ctl\x01\x1f\x7f", "é✓😀",
                           "bad\ufffd\ufffd", "\ufffd\ufffd", ""]
    assert (req["class"], req["mem"], req["intent"], req["cwd"]) == ("build", "2Gi", "why\x02", str(cwd))
    p = run_tool(launcher, d.path, "true")
    req = d.tool_requests("tool_start")[-1]
    assert (req["class"], req["mem"], req["intent"]) == (None, None, None)


def test_huge_argv_is_shortened_for_the_daemon_only(launcher, fake):
    # The daemon refuses request lines over 256 KiB; CMD must still get every byte.
    d = fake()
    big, many = "x" * 120_000, [f"a{i}" * 100 for i in range(2000)]
    p = run_tool(launcher, d.path, "sh", "-c", 'echo "${#1} $#"', "sh", big, *many)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"120000 2001\n"
    (req,) = d.tool_requests("tool_start")
    assert req["argv"][:4] == ["sh", "-c", 'echo "${#1} $#"', "sh"]
    assert 16 * 1024 <= len(req["argv"][4]) < len(big) and set(req["argv"][4]) == {"x"}
    kept = req["argv"][5:]      # whole arguments, then one cut short where the budget ends
    assert len(kept) > 100 and kept[:-1] == many[:len(kept) - 1] and many[len(kept) - 1].startswith(kept[-1])
    assert len(json.dumps(req, separators=(",", ":"))) < 256 * 1024


def test_child_waits_for_the_reply_and_is_our_child(launcher, fake):
    d = fake(delay=0.3)
    p = run_tool(launcher, d.path, "sh", "-c", "exit 0")
    assert p.returncode == 0, p.stderr
    (c,) = d.checks
    launcher_cmdline = launcher.encode() + b"\0tool\0--\0sh\0-c\0exit 0\0"
    # Still the launcher's image when asked and 0.3 s later: CMD starts only after the reply.
    assert c["cmdline_at_request"] == launcher_cmdline
    assert c["cmdline_before_reply"] == launcher_cmdline
    assert c["ppid"] == c["peer"]


def test_env_from_reply_reaches_cmd(launcher, fake):
    env = {"AGENTD_TOOL": "a1/0007", "X": 'a b=c "q" \\ é😀\n', "PATH_EXTRA": ""}
    d = fake(start={"ok": True, "agent": "a1", "tool": "0007", "env": env, "messages": []})
    p = run_tool(launcher, d.path, sys.executable, "-c",
                 "import os, json; print(json.dumps({k: os.environ.get(k) for k in ['AGENTD_TOOL', 'X', 'PATH_EXTRA']}))")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == env


def test_notices_and_messages_go_to_stderr(launcher, fake, tmp_path):
    d = fake(notices=["[agentd] queued: 2 calls ahead"], running_notices=["[agentd] frozen: memory pressure"],
             start={"ok": True, "agent": "a1", "tool": "t1", "env": {}, "messages": ["[agentd] limit 2Gi"]})
    p = run_tool(launcher, d.path, "sh", "-c", "sleep 0.3; echo out")
    assert p.returncode == 0
    assert p.stdout == b"out\n"
    assert p.stderr.decode().splitlines() == ["[agentd] queued: 2 calls ahead", "[agentd] limit 2Gi",
                                              "[agentd] frozen: memory pressure", "[agentd] tool call done"]


@pytest.mark.parametrize("script,code,status", [
    ("exit 0", 0, {"exit": 0}),
    ("exit 7", 7, {"exit": 7}),
    ("kill -TERM $$", 128 + signal.SIGTERM, {"signal": signal.SIGTERM}),
    ("kill -KILL $$", 128 + signal.SIGKILL, {"signal": signal.SIGKILL}),
])
def test_exit_status_and_tool_done(launcher, fake, script, code, status):
    d = fake()
    p = run_tool(launcher, d.path, "sh", "-c", script)
    assert p.returncode == code
    (done,) = d.tool_requests("tool_done")
    assert (done["agent"], done["tool"], done["status"]) == ("a1", "0007-batch", status)
    assert done["wall_s"] >= 0 and done["utime_s"] >= 0 and done["stime_s"] >= 0 and done["maxrss_kb"] > 0


def test_exec_failure_codes(launcher, fake, tmp_path):
    d = fake()
    p = run_tool(launcher, d.path, "/nonexistent/agentd-test-cmd")
    assert p.returncode == 127 and b"agentd: /nonexistent/agentd-test-cmd:" in p.stderr
    f = tmp_path / "not-executable"
    f.write_text("echo no\n")
    p = run_tool(launcher, d.path, str(f))
    assert p.returncode == 126
    # The call was still placed and reported: the daemon saw it end with that status.
    assert [r["status"] for r in d.tool_requests("tool_done")] == [{"exit": 127}, {"exit": 126}]


def test_feedback_file_and_fd(launcher, fake, tmp_path):
    d = fake()
    fb = tmp_path / "feedback.jsonl"
    r, w = os.pipe()
    try:
        for _ in range(2):
            p = run_tool(launcher, d.path, "true", env={"AGENTD_FEEDBACK_FILE": str(fb), "AGENTD_FEEDBACK_FD": str(w)},
                         pass_fds=(w,))
            assert p.returncode == 0, p.stderr
        os.close(w)
        w = None
        from_fd = os.read(r, 65536).decode()
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    expected = json.dumps(d.done_reply["result"]).replace(" ", "")
    assert [json.loads(line) for line in fb.read_text().splitlines()] == [d.done_reply["result"]] * 2
    assert from_fd.replace(" ", "") == (expected + "\n") * 2


def test_error_reply_exits_125_without_running_cmd(launcher, fake, tmp_path):
    d = fake(start={"ok": False, "error": {"code": "not_in_agent", "message": "`agentd tool` must run inside an agent"}})
    marker = tmp_path / "ran"
    p = run_tool(launcher, d.path, "touch", str(marker))
    assert p.returncode == 125
    assert p.stderr.decode() == "agentd: `agentd tool` must run inside an agent\n"
    assert not marker.exists()
    assert [r["op"] for r in d.requests] == ["tool_start"]


def test_attach_refused_kills_the_held_child(launcher, fake, tmp_path):
    d = fake(attach={"ok": False, "error": {"code": "not_child", "message": "process 1 is not a child"}})
    marker = tmp_path / "ran"
    p = run_tool(launcher, d.path, "touch", str(marker))
    assert p.returncode == 125 and p.stderr.decode() == "agentd: process 1 is not a child\n"
    assert not marker.exists()
    assert _read_proc(d.checks[0]["pid"], "stat") is None   # the waiting child was reaped
    assert d.tool_requests("tool_done") == []


def test_unavailable_reply_falls_back(launcher, fake, tmp_path):
    d = fake(start={"ok": False, "error": {"code": "unavailable", "message": "cgroup tree unavailable"}})
    marker = tmp_path / "ran"
    p = run_tool(launcher, d.path, "sh", "-c", f"touch '{marker}'; exit 5")
    assert p.returncode == 5 and marker.exists()
    assert p.stderr.decode().splitlines() == [
        f"agentd: no daemon at {d.path} (cgroup tree unavailable): running sh without a tool-call cgroup"]


def test_no_daemon_runs_cmd_with_one_warning(launcher, sockdir):
    path = os.path.join(sockdir, "absent.sock")
    t0 = time.monotonic()
    p = run_tool(launcher, path, "sh", "-c", "echo ran; exit 4")
    assert p.returncode == 4 and p.stdout == b"ran\n"
    assert p.stderr.decode().splitlines() == [
        f"agentd: no daemon at {path} (No such file or directory): running sh without a tool-call cgroup"]
    assert time.monotonic() - t0 < 5      # retried about a second, not forever


@pytest.mark.parametrize("mode", [{"drop_after_start": True}, {"restart_after": 1.0}])
def test_tool_done_survives_a_daemon_restart(launcher, fake, mode):
    d = fake(**mode)
    p = run_tool(launcher, d.path, "sh", "-c", "sleep 0.2; exit 4")
    assert p.returncode == 4, p.stderr
    (done,) = d.tool_requests("tool_done")
    assert done["status"] == {"exit": 4}
    assert d.connections == 2
    assert b"[agentd] tool call done" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_signals_are_forwarded(launcher, fake, sig):
    d = fake()
    script = f'trap \'kill $!; echo got; exit 9\' {sig.name[3:]}; echo ready; sleep 20 & wait'
    e = dict(os.environ, AGENTD_SOCKET=d.path)
    # A signal the test run ignores (`nohup` ignores SIGHUP) stays ignored in the tool, as
    # the launcher hands on its caller's dispositions, and a shell cannot trap a signal
    # ignored at its start: the launcher starts with the signal at its default.
    p = subprocess.Popen([launcher, "tool", "--", "sh", "-c", script], stdout=subprocess.PIPE, env=e,
                         preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    try:
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(sig)
        assert p.stdout.read() == b"got\n"
        assert p.wait(10) == 9
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert d.tool_requests("tool_done")[0]["status"] == {"exit": 9}


@pytest.mark.parametrize("phase", ["start", "attach"])
def test_cancel_while_waiting_for_the_daemon(launcher, fake, tmp_path, phase):
    # Queued (no child yet): SIGTERM ends the launcher itself. Held child waiting for
    # its move: the child gets the signal and the launcher reports it like a shell.
    d = fake(**{"start_delay" if phase == "start" else "delay": 1.5})
    marker = tmp_path / "ran"
    e = dict(os.environ, AGENTD_SOCKET=d.path)
    p = subprocess.Popen([launcher, "tool", "--", "touch", str(marker)], env=e, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while len(d.requests) < (1 if phase == "start" else 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == (-signal.SIGTERM if phase == "start" else 128 + signal.SIGTERM)
    time.sleep(1.7)   # past the daemon's late reply: CMD must still not have run
    assert not marker.exists()


def test_clone_into_a_non_cgroup_falls_back_to_attach(launcher, fake, tmp_path):
    # clone3 refuses a directory that is not a cgroup: the held child path takes over.
    d = fake(cgroup_dir=str(tmp_path))
    p = run_tool(launcher, d.path, "sh", "-c", "exit 6")
    assert p.returncode == 6, p.stderr
    assert [r["op"] for r in d.requests] == ["tool_start", "tool_attach", "tool_done"]


@pytest.mark.host
def test_clone_into_cgroup_places_cmd_without_attach(launcher, fake, sockdir):
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        pytest.fail("this test needs root and a cgroup v2 hierarchy")
    fs, cg = CgroupFS(mount), f"agentd-test-{os.getpid()}-clone"
    fs.mkdir(cg)
    try:
        d = fake(cgroup_dir=os.path.join(mount, cg))
        p = run_tool(launcher, d.path, "sh", "-c", 'grep ^0:: /proc/self/cgroup; sleep 0.1 & grep ^0:: /proc/$!/cgroup')
        assert p.returncode == 0, p.stderr
        assert p.stdout.decode().splitlines() == [f"0::/{cg}"] * 2
        assert [r["op"] for r in d.requests] == ["tool_start", "tool_done"]
    finally:
        fs.wait_empty(cg, 5)
        fs.rmdir(cg)


def test_closed_stdio_stays_closed_for_cmd(launcher, fake):
    # Started with stdin and stdout closed, our socket and pipes must not take fds 0/1,
    # or CMD would talk to the daemon connection. CMD sees exactly what we inherited.
    d = fake()
    probe = "import os, sys\nfor fd in (0, 1):\n    try: os.fstat(fd); sys.exit(10 + fd)\n    except OSError: pass\n"
    e = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    e["AGENTD_SOCKET"] = d.path
    p = subprocess.run(["sh", "-c", '"$@" <&- >&-', "sh", launcher, "tool", "--", sys.executable, "-c", probe],
                       env=e, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in d.tool_requests("tool_done")] == [{"exit": 0}]
