"""Denial of service by the agents and local users agentd serves, tried as they would.

Each test reproduces one attack against a real daemon on the host: the attacker runs under
an unused, unprivileged uid (set in its own process before it runs; no account needed),
either outside every agent or inside an agent of its own, and another agent's tool call
must go on as if nothing happened. Bounds are generous: they hold on a busy 2-core host
and fail by a wide margin without the defence.
"""

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.helpers import REPO, DaemonProc, agentd_cmd
from tests.host.ops_support import WAIT, Gate


def unused_uid():
    """A uid no account has (its own gid alike), distinct per test process."""
    uid = 61000 + os.getpid() % 3000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


# The attackers' interpreter: one every user may run (the test's own may live under /root).
ATTACKER_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
                       sys.executable)


def drop_to(uid):
    def enter():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return enter


def attacker_in_agent(daemon, name, code, uid, **kw):
    """`agentd run` an agent whose process becomes `uid` and runs Python `code` (it
    talks to the daemon itself, as a compromised agent would). stdin/stdout are pipes."""
    script = 'exec setpriv --reuid="$1" --regid="$1" --clear-groups -- "$2" -S -c "$ATTACK"'
    cmd = agentd_cmd() + ["run", "--name", name, "--", "bash", "-c", script, "agent", str(uid), ATTACKER_PYTHON]
    return subprocess.Popen(cmd, env=dict(daemon.env, ATTACK=code), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", **kw)


def read_until(proc, word, timeout=60):
    """Lines of `proc`'s stdout up to one that starts with `word` (read in a thread)."""
    lines, found = [], threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(word):
                found.set()
                return
    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), f"no {word!r} from the attacker: {lines} {proc.poll()}"
    return lines


def finish(proc, timeout=30):
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# Python run by the attackers (no agentd import: it is what any local program could do).
CLIENT = r'''
import json, os, socket, sys, time
SOCK = os.environ["AGENTD_SOCKET"]
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(SOCK)
    return s
def call(s, **req):
    s.sendall((json.dumps({"v": 1, **req}) + "\n").encode())
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        msg = json.loads(line)
        if "notice" not in msg:
            return msg
'''


def hello_latencies(daemon, stop, out):
    """Round trips of `hello` every 50 ms until `stop` is set."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            daemon.request({"op": "hello"})
            out.append(time.monotonic() - t0)
        except OSError:
            out.append(float("inf"))
        time.sleep(0.05)


# --- row 3: descriptor exhaustion -----------------------------------------------------

FLOOD = r'''
import os, select, socket, sys, time
SOCK, N = sys.argv[1], int(sys.argv[2])
socks, refused = [], 0
give_up = time.monotonic() + 15
while len(socks) + refused < N:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(SOCK)
        socks.append(s)
    except BlockingIOError:     # the backlog is full: the daemon does not accept; insist
        s.close()
        if time.monotonic() > give_up:
            refused += 1
        else:
            time.sleep(0.01)
    except OSError:
        s.close()
        refused += 1
print("ready", len(socks), refused, flush=True)
sys.stdin.readline()            # hold them until told
deadline = time.monotonic() + float(sys.argv[3])
open_ = {s.fileno(): s for s in socks}
p = select.poll()
for fd in open_:
    p.register(fd, select.POLLIN)
while open_ and time.monotonic() < deadline:
    for fd, _ in p.poll(500):
        try:
            data = open_[fd].recv(65536)
        except OSError:
            data = b""
        if not data:
            p.unregister(fd)
            open_.pop(fd).close()
print("still_open", len(open_), flush=True)
'''


def test_attack_3_fd_flood_from_user_in_no_agent(daemon, tmp_path):
    """1100 connections held by a user who is in no agent, against a daemon whose
    descriptor limit is 1024: another agent's tool call still runs in its cgroup, the
    daemon keeps descriptors for its own work, the attacker's connections are closed,
    and the log does not grow into a storm."""
    pid = daemon.proc.pid
    # As a daemon started under a hard limit of 1024 would run.
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=1024:1024"], check=True)
    uid = unused_uid()
    flood = subprocess.Popen([ATTACKER_PYTHON, "-S", "-c", FLOOD, daemon.socket, "1100", "30"],
                             preexec_fn=drop_to(uid), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = read_until(flood, "ready")[-1].split()
        assert int(ready[1]) + int(ready[2]) == 1100
        time.sleep(1.0)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        assert fds < 1024 - 128, f"the daemon holds {fds} descriptors of 1024: no reserve left"
        victim = daemon.run('"$@" tool -- echo placed', *agentd_cmd(), name="victim", timeout=60)
        assert victim.returncode == 0, victim.stderr
        assert "placed" in victim.stdout
        assert "without a tool-call cgroup" not in victim.stderr, victim.stderr
        daemon.wait_event(lambda e: e.get("event") == "tool_end" and e.get("agent") == "victim"
                          and e.get("outcome") == "ok")
        assert daemon.request({"op": "hello"})["ok"]
        # The flooder's connections do not stay: refused at once or closed when no
        # request comes (daemon.first_request_timeout_s).
        flood.stdin.write("go\n")
        flood.stdin.flush()
        left = read_until(flood, "still_open", timeout=60)[-1].split()
        assert int(left[1]) == 0, f"{left[1]} attacker connections still open"
    finally:
        finish(flood)
    size = os.path.getsize(daemon.log_path)
    assert size < 1_000_000, f"daemon log grew to {size} bytes under the flood"


@pytest.fixture(params=["detection-off", "detection-on"])
def daemon_to_hang(request, tmp_path, test_root):
    """A daemon with automatic detection off, and one with it on: then the BPF program
    stops each exec in an agent until the daemon places it, so a stopped daemon must not
    hold the launcher's own exec (the heartbeat and the exec watchdog see to that)."""
    with open(os.path.join(REPO, "policies", "default.yaml")) as f:
        text = f.read()
    assert "detection:\n  enabled: true\n" in text
    if request.param == "detection-off":
        text = text.replace("detection:\n  enabled: true\n", "detection:\n  enabled: false\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy))
    d.start()
    yield d
    d.cleanup()


def test_attack_3_launcher_runs_command_when_daemon_hangs(daemon_to_hang, tmp_path):
    """The daemon accepts but never answers (stopped): `agentd tool` says so in one line
    and runs the command without a tool-call cgroup instead of hanging the agent."""
    daemon = daemon_to_hang
    gate = Gate(tmp_path / "gate")
    out, err = tmp_path / "out", tmp_path / "err"
    started = tmp_path / "started"
    script = (f'gate="$1"; shift; : > {started}; {WAIT}; "$@" tool -- echo ran > {out} 2> {err}; '
              f'echo "rc=$?" >> {out}')
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "hung", "--", "bash", "-c", script, "agent",
                                             gate.path, *agentd_cmd()],
                             env=dict(daemon.env, AGENTD_REPLY_TIMEOUT="2"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = False
    try:
        deadline = time.monotonic() + 30
        while not started.exists():      # placed and running: the daemon is done with it
            assert time.monotonic() < deadline, "the agent never started"
            time.sleep(0.05)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        stopped = True
        deadline = time.monotonic() + 10
        while not gate.open():
            assert time.monotonic() < deadline, "the agent never reached its gate"
            time.sleep(0.05)
        deadline = time.monotonic() + 40
        while "rc=" not in (out.read_text() if out.exists() else ""):
            assert time.monotonic() < deadline, "agentd tool hung on a daemon that does not answer"
            time.sleep(0.1)
        lines = out.read_text().split()
        assert lines == ["ran", "rc=0"], lines
        said = [l for l in err.read_text().splitlines() if l.strip()]
        assert len(said) == 1 and "did not answer within 2 s" in said[0], said
    finally:
        if stopped:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


# --- row 4: parser stalls -------------------------------------------------------------

STALL = CLIENT + r'''
for i in range(4):
    # A new argv each time: a cache of analyses must not be what saves the daemon.
    argv = ["eval", '"' + str(i) + "a" * 125000, "b" * 125000 + "\\"]
    s = connect()
    r = call(s, op="tool_start", argv=argv, **{"class": "batch"})
    print("reply", r and r.get("ok"), r and (r.get("error") or {}).get("code"), flush=True)
    s.close()
print("done", flush=True)
sys.stdin.readline()
'''


def test_attack_4_argv_parser_stall(daemon):
    """tool_start with a 250 KB argv built to make a retrying shell tokenizer rescan it:
    the daemon's event loop keeps answering other clients within a generous bound."""
    uid = unused_uid()
    lat, stop = [], threading.Event()
    prober = threading.Thread(target=hello_latencies, args=(daemon, stop, lat), daemon=True)
    prober.start()
    attacker = attacker_in_agent(daemon, "staller", STALL, uid)
    try:
        lines = read_until(attacker, "done", timeout=180)
    finally:
        stop.set()
        finish(attacker)
    prober.join(10)
    assert [l.split()[1] for l in lines if l.startswith("reply")].count("True") >= 3, lines
    assert lat, "no hello answered while the attack ran"
    assert max(lat) < 1.0, f"the event loop was blocked: hello took up to {max(lat):.2f} s"


EXEC_HUGE = r'''
import subprocess, sys
# 1.3 MB of arguments; the script (the part a policy analyses) ends in an open quote and
# a backslash, which made a retrying tokenizer rescan it again and again.
script = "sleep 3\n\"" + "a" * 120000 + "\\"
p = subprocess.Popen(["/bin/sh", "-c", script, "sh"] + ["b" * 120000] * 10, stderr=subprocess.DEVNULL)
p.wait()
print("done", flush=True)
sys.stdin.readline()
'''


def test_attack_4_polling_exec_with_huge_argv(tmp_path, test_root):
    """Without BPF the daemon polls the agents' processes and reads their command lines:
    an exec with 1.3 MB of arguments is read and analysed in bounded time."""
    empty = tmp_path / "no-bpf"
    empty.mkdir()
    d = DaemonProc(str(tmp_path), test_root, extra_env={"AGENTD_BPF_DIR": str(empty)}).start()
    lat, stop = [], threading.Event()
    prober = threading.Thread(target=hello_latencies, args=(d, stop, lat), daemon=True)
    try:
        assert "polling /proc" in d.log()
        prober.start()
        attacker = attacker_in_agent(d, "execer", EXEC_HUGE, unused_uid())
        try:
            read_until(attacker, "done", timeout=180)
        finally:
            stop.set()
            finish(attacker)
        prober.join(10)
        starts = [e for e in d.events() if e.get("event") == "tool_start" and e.get("agent") == "execer"]
    finally:
        d.cleanup()
    assert lat and max(lat) < 1.0, f"the event loop was blocked: hello took up to {max(lat):.2f} s"
    # It was placed, and what was read of its command line is recorded clipped, with a marker.
    assert starts, "the exec was never placed"
    start = starts[0]
    assert start["argv"][:2] == ["/bin/sh", "-c"] and "...[cut: " in start["argv"][2], start["argv"][:2]


# --- row 5: logging amplification and a full disk -------------------------------------

BIG_ARGV = CLIENT + r'''
argv = ["true", "x" * 120000, "y" * 120000]
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    s = connect()
    r = call(s, op="tool_start", argv=argv)
    assert r and r.get("ok"), r
    d = call(s, op="tool_done", agent=r["agent"], tool=r["tool"], status={"exit": 0})
    assert d and d.get("ok"), d
    s.close()
print("done", flush=True)
sys.stdin.readline()
'''


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_attack_5_argv_flood_is_clipped_in_records(daemon):
    """30 tool calls with 2 x 120 KB argv: the event log, state and history keep a clipped
    argv with a marker and the original length, not 240 KB per record."""
    before_events = os.path.getsize(daemon.event_log)
    attacker = attacker_in_agent(daemon, "bigargv", BIG_ARGV, unused_uid())
    try:
        read_until(attacker, "done", timeout=120)
    finally:
        finish(attacker)
    grown = os.path.getsize(daemon.event_log) - before_events
    assert grown < 1_500_000, f"the event log grew {grown} bytes for 30 calls"
    assert dir_size(daemon.state_dir) < 3_000_000, f"state dir is {dir_size(daemon.state_dir)} bytes"
    starts = [e for e in daemon.events() if e.get("event") == "tool_start" and e.get("agent") == "bigargv"]
    assert len(starts) == 30
    argv = starts[0]["argv"]
    assert argv[0] == "true" and argv[1].endswith("[cut: 120000 chars]"), argv[1][-60:]
    assert any("120000 chars" in a for a in argv[2:]), [a[-40:] for a in argv]


def test_attack_5_event_log_disk_full_does_not_fail_tool_calls(tmp_path, test_root, cgfs):
    """The event log's file system is full: tool calls still run, in their cgroups, and
    are cleaned up; the daemon says so once."""
    mnt = tempfile.mkdtemp(prefix="agentd-evfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", mnt], check=True)
    d = DaemonProc(str(tmp_path), test_root)
    d.event_log = os.path.join(mnt, "events.jsonl")
    try:
        d.start()
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass                       # ENOSPC: full
        finally:
            os.close(fd)
        tools = cgfs.path(f"{test_root}/agents/victim/tools")
        # Counted with a glob (a builtin): a child such as ls would be a tool call itself.
        # Each call's events are longer than what is left of the log's last page.
        r = d.run('"$@" tool -- true "$BIG" && echo one && "$@" tool -- true "$BIG" && echo two && '
                  'shopt -s nullglob && t=("$TOOLS"/*/) && echo ${#t[@]}',
                  *agentd_cmd(), name="victim", env={"TOOLS": tools, "BIG": "x" * 6000})
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["one", "two", "0"], (r.stdout, r.stderr)
        assert "internal error" not in r.stderr
        log = d.log()
        assert log.count("cannot write the event log") == 1, log[-2000:]
        assert d.request({"op": "hello"})["ok"]
    finally:
        d.cleanup()
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


# --- row 6: reservations and cgroups without processes --------------------------------

HOLD = CLIENT + r'''
held = []
for i in range(2):
    time.sleep(2.5 * i)
    s = connect()
    r = call(s, op="tool_start", argv=["cargo", "build"], mem="45%", **{"class": "batch"})
    assert r and r.get("ok"), r
    held.append(s)             # no process is ever placed in these cgroups
print("held", flush=True)
sys.stdin.readline()
'''


def test_attack_6_reservations_without_process(daemon):
    """Two tool calls that reserve 45% of memory each and never place a process: another
    agent's tool call is admitted at once, not after admission's maximum wait."""
    attacker = attacker_in_agent(daemon, "hoarder", HOLD, unused_uid())
    try:
        read_until(attacker, "held", timeout=150)
        time.sleep(3.0)
        t0 = time.monotonic()
        r = daemon.run('"$@" tool --mem 10% -- true', *agentd_cmd(), name="victim", timeout=90)
        took = time.monotonic() - t0
    finally:
        finish(attacker)
    assert r.returncode == 0, r.stderr
    assert "waiting for memory" not in r.stderr, r.stderr
    assert took < 30, f"the victim's tool call took {took:.1f} s"


CGROUPS = CLIENT + r'''
s = connect()
ok = refused = 0
codes = set()
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(wr)
        os.read(rd, 1)         # wait, then exit: the tool cgroup is left empty
        os._exit(0)
    os.close(rd)
    r = call(s, op="tool_start", pid=pid, argv=["true"])
    if r and r.get("ok"):
        ok += 1
    else:
        refused += 1
        codes.add((r or {}).get("error", {}).get("code"))
    os.close(wr)
    os.waitpid(pid, 0)
print("result", ok, refused, ",".join(sorted(c or "?" for c in codes)), flush=True)
sys.stdin.readline()
'''


def test_attack_6_empty_tool_cgroups_bounded(daemon, cgfs):
    """One connection starts tool calls for 300 short-lived children and never reports
    their end: the agent's calls stop at the policy's cap, and the kernel bounds the
    agent's cgroups too (cgroup.max.descendants)."""
    attacker = attacker_in_agent(daemon, "mkdirs", CGROUPS, unused_uid())
    try:
        res = read_until(attacker, "result", timeout=180)[-1].split()
        agent_cg = f"{daemon.root}/agents/mkdirs"
        tools = cgfs.children(f"{agent_cg}/tools")
        limit = cgfs.read(agent_cg, "cgroup.max.descendants").strip()
    finally:
        finish(attacker)
    ok, refused = int(res[1]), int(res[2])
    assert ok <= 128 and refused >= 300 - 128, res
    assert "too_many_tools" in res[3], res
    assert len(tools) <= 128, f"{len(tools)} tool cgroups"
    assert limit != "max" and int(limit) <= 256, limit
