"""Who a request comes from, and what it may act on, against a real daemon: each test
plays an attack as an unprivileged local user would (a user made for the test, inside
an agent of its own), and checks that nothing outside the attacker's agent changed.

Pid reuse is made deterministic by the test itself (root): it writes
/proc/sys/kernel/ns_last_pid and forks until the freed pid is taken by a process of its
choosing (a process of another user, outside every agent, or moved into a victim agent).
"""

import grp
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from agentd.kernel.procfs import own_cgroup
from tests.helpers import REPO, DaemonProc, agentd_cmd

_seq = itertools.count()


# --- the actors -----------------------------------------------------------------------
class User:
    """A unique unprivileged user (and optionally a group it belongs to), removed after."""

    def __init__(self, group=None):
        self.name = f"agtd{os.getpid()}x{next(_seq)}"
        subprocess.run(["useradd", "-M", "-N", "-r", "-s", "/usr/sbin/nologin", self.name], check=True)
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.groups = [self.gid]
        if group is not None:
            subprocess.run(["usermod", "-a", "-G", group, self.name], check=True)
            self.groups.append(grp.getgrnam(group).gr_gid)

    def cmd(self):
        """Prefix that runs a command as this user (its groups only)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                f"--groups={','.join(str(g) for g in self.groups)}"]

    def remove(self):
        subprocess.run(["userdel", self.name], check=False, capture_output=True)


@pytest.fixture
def attacker():
    u = User()
    yield u
    u.remove()


@pytest.fixture
def api_group():
    name = f"agtdg{os.getpid()}x{next(_seq)}"
    subprocess.run(["groupadd", "-r", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def work(attacker):
    """A folder the attacker owns (pytest's tmp is root-only): its script and its notes."""
    d = tempfile.mkdtemp(prefix="agentd-attack-")
    os.chown(d, attacker.uid, attacker.gid)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# The attacker's side of every test: talks to the socket directly, and leaves notes in
# its folder for the test to read (put) or waits for the test's (wait_for).
ATTACK_LIB = """\
import json, os, socket, subprocess, sys, time
WORK = os.environ["ATTACK_WORK"]
SOCK = os.environ["AGENTD_SOCKET"]

def put(name, text=""):
    with open(os.path.join(WORK, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(WORK, name + ".tmp"), os.path.join(WORK, name))

def wait_for(name, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(WORK, name)):
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + name)
        time.sleep(0.02)
    with open(os.path.join(WORK, name)) as f:
        return f.read()

def send(s, obj):
    s.sendall((json.dumps(dict(v=1, **obj)) + "\\n").encode())

def recv(f):
    line = f.readline()
    return json.loads(line) if line else None

def req(obj):
    # one request on a connection of its own
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(SOCK)
        send(s, obj)
        return recv(s.makefile())
"""


def write_attack(work, body):
    path = os.path.join(work, "attack.py")
    with open(path, "w") as f:
        f.write(ATTACK_LIB + textwrap.dedent(body))
    os.chmod(path, 0o644)
    return path


def wait_file(work, name, proc=None, timeout=60):
    path = os.path.join(work, name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the attacker ended before writing {name}: {out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} from the attacker")
        time.sleep(0.02)
    with open(path) as f:
        return f.read()


def touch(work, name):
    with open(os.path.join(work, name), "w"):
        pass


def spawn_with_pid(pid, argv, tries=500):
    """Start `argv` (as root, in the test's own cgroup) as process `pid`: the kernel gives
    the next fork ns_last_pid + 1 unless another process took it first; try again then."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    pytest.fail(f"could not get pid {pid} in {tries} forks")


def oom_adj(pid):
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def start_agent(d, name, argv, env=None, **kw):
    return subprocess.Popen(agentd_cmd() + ["run", "--name", name, "--", *argv], env=dict(env or d.env),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def attack_in_agent(d, attacker, work, name="att"):
    """The attacker's script, run as the attacker inside an agent of its own."""
    env = dict(d.env, ATTACK_WORK=work, ATTACK_LAUNCHER=agentd_cmd()[0])
    return start_agent(d, name, attacker.cmd() + [sys.executable, os.path.join(work, "attack.py")], env=env)


def wait_tool(cgfs, d, agent, timeout=15):
    tools = f"{d.root}/agents/{agent}/tools"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cgfs.exists(tools) and cgfs.children(tools):
            return cgfs.children(tools)[0]
        time.sleep(0.05)
    raise AssertionError(f"agent {agent} has no tool call: {d.log()[-2000:]}")


def agent_ids(status):
    return [a["agent"] for a in status["agents"]]


def stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(20)


ADMISSION_POLICY = """\
version: 1
pressure:
  budget: 300Mi
admission:
  enabled: true
  max_wait_s: 60
  on_timeout: run
detection:
  enabled: false
"""


# --- 1: a checked child's pid recycled while its request waits in admission -------------
def test_attack_1_pid_recycled_during_admission(tmp_path, test_root, attacker, work):
    """tool_start names the caller's own child; the check passes; the request waits in
    admission; the child exits and its pid goes to a root process outside every agent.
    The daemon must not move, re-prioritise or (through the attacker's kill) kill it."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(ADMISSION_POLICY)
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
    write_attack(work, """\
        # A live call that holds the memory budget, so the next one waits.
        holder = subprocess.Popen([os.environ["ATTACK_LAUNCHER"], "tool", "--mem", "200M", "--", "sh", "-c",
                                   'touch "$ATTACK_WORK/held"; exec sleep 600'])
        wait_for("held")
        child = subprocess.Popen(["sleep", "600"])
        s = socket.socket(socket.AF_UNIX); s.connect(SOCK); f = s.makefile()
        send(s, dict(op="tool_start", pid=child.pid, argv=["sleep", "600"], mem="200M"))
        put("queued", json.dumps(recv(f)))
        child.kill(); child.wait()          # reaped: its pid is free for anyone
        put("pid", str(child.pid))
        wait_for("recycled")
        holder.terminate(); holder.wait()   # room appears: the request goes on
        reply = recv(f)
        while reply is not None and "notice" in reply:
            reply = recv(f)
        put("reply", json.dumps(reply))
        if reply and reply.get("ok"):
            put("kill", json.dumps(req(dict(op="kill", agent=reply["agent"], tool=reply["tool"]))))
        put("done")
        """)
    att = stranger = None
    try:
        att = attack_in_agent(d, attacker, work)
        queued = json.loads(wait_file(work, "queued", att))
        assert queued.get("notice") == "queued", queued       # the request really waits
        pid = int(wait_file(work, "pid", att))
        stranger = spawn_with_pid(pid, ["sleep", "600"])
        cg, adj = own_cgroup(pid), oom_adj(pid)
        touch(work, "recycled")
        wait_file(work, "done", att)
        reply = json.loads(wait_file(work, "reply"))
        assert stranger.poll() is None, "the stranger was killed"
        assert own_cgroup(pid) == cg, f"the stranger was moved to {own_cgroup(pid)}"
        assert oom_adj(pid) == adj
        assert reply["ok"] is False and reply["error"]["code"] in ("gone", "not_child"), reply
    finally:
        stop(stranger, att)
        d.cleanup()


# --- 2: the connecting process exits and its pid goes to a process of agent B ------------
def test_attack_2_peer_pid_reused_by_another_agent(tmp_path, test_root, cgfs, attacker, work):
    """A child of the attacker connects and exits; the attacker keeps the socket; the
    child's pid goes to a process of agent B. Requests on that connection must not act
    with B's identity: no status of B, no kill of B's tool call."""
    d = DaemonProc(str(tmp_path), test_root).start()
    victim = att = stranger = None
    try:
        victim = start_agent(d, "victim", ["bash", "-c", '"$@" tool -- sleep 600', "a", *agentd_cmd()])
        tool = wait_tool(cgfs, d, "victim")
        with open(os.path.join(work, "tool"), "w") as f:
            f.write(tool)
        write_attack(work, """\
            s = socket.socket(socket.AF_UNIX)
            pid = os.fork()
            if pid == 0:                     # the connection is the child's
                s.connect(SOCK)
                os._exit(0)
            os.waitpid(pid, 0)
            put("pid", str(pid))
            tool = wait_for("tool")
            wait_for("recycled")
            f = s.makefile()
            out = []
            for obj in (dict(op="status", agent="victim"), dict(op="kill", agent="victim", tool=tool)):
                try:
                    send(s, obj)
                    out.append(recv(f))
                except OSError as err:
                    out.append({"closed": str(err)})
            put("out", json.dumps(out))
            """)
        att = attack_in_agent(d, attacker, work)
        pid = int(wait_file(work, "pid", att))
        stranger = spawn_with_pid(pid, ["sleep", "600"])
        cgfs.move(f"{d.root}/agents/victim/main", pid)       # a process of agent B
        touch(work, "recycled")
        status, kill = json.loads(wait_file(work, "out", att))
        assert not (status and status.get("ok")), f"the attacker read B's status: {status}"
        assert not (kill and kill.get("ok")), f"the attacker killed B's tool call: {kill}"
        assert cgfs.populated(f"{d.root}/agents/victim/tools/{tool}")
        assert "closed" in d.log() or status is None or "closed" in status
    finally:
        stop(stranger, att, victim)
        d.cleanup()


# --- 10: an API-group member inside agent A ends agent B ---------------------------------
@pytest.mark.parametrize("who", ["group_member", "root"])
def test_attack_10_admin_inside_an_agent_ends_another(tmp_path, test_root, cgfs, api_group, work, who):
    """Root or a member of the API group, running inside agent A, has A's rights only:
    run_done (and status, kill) for agent B are refused and B keeps running."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\ndaemon:\n  api_group: {api_group}\ndetection:\n  enabled: false\n")
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
    member = User(group=api_group)
    victim = att = None
    try:
        victim = start_agent(d, "victim", ["bash", "-c", '"$@" tool -- sleep 600', "a", *agentd_cmd()])
        tool = wait_tool(cgfs, d, "victim")
        write_attack(work, f"""\
            out = [req(dict(op="run_done", agent="victim")), req(dict(op="kill", agent="victim", tool="{tool}")),
                   req(dict(op="status", agent="victim")), req(dict(op="reload"))]
            put("out", json.dumps(out))
            """)
        os.chown(work, member.uid, member.gid)
        prefix = member.cmd() if who == "group_member" else []
        env = dict(d.env, ATTACK_WORK=work)
        att = start_agent(d, "att", prefix + [sys.executable, os.path.join(work, "attack.py")], env=env)
        out = json.loads(wait_file(work, "out", att))
        assert [r["error"]["code"] if not r["ok"] else "ok" for r in out] == ["forbidden"] * 4, out
        assert "victim" in agent_ids(d.request({"op": "status"}))
        assert cgfs.populated(f"{d.root}/agents/victim/main")
        assert cgfs.populated(f"{d.root}/agents/victim/tools/{tool}")
        # The same user outside every agent is an admin (the group still means something).
        r = subprocess.run(member.cmd() + [sys.executable, "-c", ATTACK_LIB + "print(json.dumps(req(dict(op='status'))))"],
                           env=env, capture_output=True, text=True, timeout=30)
        assert "victim" in agent_ids(json.loads(r.stdout)), r.stderr
    finally:
        stop(att, victim)
        member.remove()
        d.cleanup()


# --- 7: an agent's reported figures poison another agent's forecast ----------------------
def test_attack_7_reported_maxrss_poisons_another_agents_forecast(tmp_path, test_root, attacker, work):
    """Agent A reports six `pytest` calls that never ran as peaking at 40 GiB. Forecasts are
    keyed by signature across agents: B's next `pytest` must be forecast from what the
    kernel saw, not from A's word."""
    d = DaemonProc(str(tmp_path), test_root, policy=str(_no_detection(tmp_path))).start()
    fake = os.path.join(work, "pytest")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    env = dict(d.env, PATH=f"{work}:{os.environ['PATH']}")
    write_attack(work, """\
        for _ in range(6):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(SOCK); f = s.makefile()
                send(s, dict(op="tool_start", argv=["pytest"]))
                r = recv(f)
                send(s, dict(op="tool_done", agent=r["agent"], tool=r["tool"], status={"exit": 0},
                             wall_s=120.0, utime_s=100.0, stime_s=5.0, maxrss_kb=40 << 20))
                put("lied", json.dumps(recv(f)))
        put("done")
        """)
    victim = att = None
    try:
        # B's own history first: three real runs of its pytest.
        victim = subprocess.run(agentd_cmd() + ["run", "--name", "victim", "--", "bash", "-c",
                                                'for i in 1 2 3; do "$@" tool -- pytest; done', "b", *agentd_cmd()],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert victim.returncode == 0, victim.stderr
        att = attack_in_agent(d, attacker, work)
        wait_file(work, "done", att)
        lied = json.loads(wait_file(work, "lied"))
        assert lied["ok"], lied
        victim = subprocess.run(agentd_cmd() + ["run", "--name", "victim2", "--", *agentd_cmd(), "tool", "--",
                                                "pytest"], env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert victim.returncode == 0, victim.stderr
        end = d.wait_event(lambda e: e.get("event") == "tool_end" and e.get("agent") == "victim2")
        assert end["forecast_bytes"] < 1 << 30, f"B's pytest forecast {end['forecast_bytes'] / 2**30:.1f} GiB"
        # What A sent is kept, labelled as its own report; it is not the peak.
        assert lied["result"]["reported"]["maxrss_kb"] == 40 << 20
        assert lied["result"]["memory_peak_bytes"] < 1 << 30
    finally:
        stop(att)
        d.cleanup()


def _no_detection(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ndetection:\n  enabled: false\n")
    return p


# --- 8: declare one command, run another ------------------------------------------------
def test_attack_8_declared_argv_is_not_what_runs(tmp_path, test_root, attacker, work):
    """Under a policy that honours no declarations (multi-tenant), a call that declares
    `git status` and then execs python is classed from what runs, not as interactive."""
    d = DaemonProc(str(tmp_path), test_root, policy="multi-tenant").start()
    write_attack(work, """\
        r, w = os.pipe()
        child = os.fork()
        if child == 0:                 # held until placed, then runs something else
            os.close(w); os.read(r, 1)
            os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(30)"])
        os.close(r)
        s = socket.socket(socket.AF_UNIX); s.connect(SOCK); f = s.makefile()
        send(s, dict(op="tool_start", pid=child, argv=["git", "status"]))
        reply = recv(f)
        put("started", json.dumps(reply))
        os.write(w, b"G")
        wait_for("seen")
        os.kill(child, 9); os.waitpid(child, 0)
        send(s, dict(op="tool_done", agent=reply["agent"], tool=reply["tool"], status={"signal": 9}))
        recv(f)
        """)
    att = None
    try:
        att = attack_in_agent(d, attacker, work)
        started = json.loads(wait_file(work, "started", att))
        assert started["ok"], started
        assert started["tool"].endswith("-interactive")    # what the declaration bought at first
        deadline = time.monotonic() + 15
        cls = None
        while time.monotonic() < deadline:
            snap = d.request({"op": "status", "agent": "att"})
            tools = [t for a in snap["agents"] for t in a["tools"] if t["tool"] == started["tool"]]
            cls = tools[0]["tool_class"] if tools else None
            if cls not in (None, "interactive"):
                break
            time.sleep(0.1)
        touch(work, "seen")
        assert cls == "normal", f"the call still runs as {cls}"
        ev = d.wait_event(lambda e: e.get("event") == "tool_reclassify")
        assert ev["old_class"] == "interactive" and os.path.basename(ev["argv"][0]).startswith("python")
    finally:
        stop(att)
        d.cleanup()


# --- 9: argv[0] "agentd" hides a command from automatic detection ------------------------
def test_attack_9_argv0_agentd_is_still_a_tool_call(tmp_path, test_root, attacker, work):
    """`exec -a agentd sleep` from an agent's main cgroup is a tool call like any other;
    the real agentd front (the launcher file) is still never one: it makes its own."""
    d = DaemonProc(str(tmp_path), test_root).start()
    env = dict(d.env, ATTACK_WORK=work)
    try:
        r = start_agent(d, "att", attacker.cmd() + ["bash", "-c", '(exec -a agentd sleep 1); "$@" tool -- true',
                                                     "a", *agentd_cmd()], env=env)
        out, _ = r.communicate(timeout=60)
        assert r.returncode == 0, out
        starts = [e for e in d.events() if e.get("event") == "tool_start" and e.get("agent") == "att"]
        assert [(e["argv"][0], e["origin"]) for e in starts] == [("agentd", "auto"), ("true", "launcher")], starts
    finally:
        d.cleanup()


# --- `sudo agentd run`: the agent runs as the user who ran sudo, agentd keeps root --------
AS_WHO = 'id -u; id -g; id -G; "$1" tool -- sh -c \'echo "tool=$AGENTD_TOOL"; id -u\''


@pytest.mark.parametrize("mode", ["daemon", "standalone"])
def test_attack_sudo_run_gives_the_agent_the_invoking_users_rights(tmp_path, test_root, api_group, mode):
    """`sudo agentd run -- CMD` must not hand CMD root (which would make it an API admin
    and let it write cgroupfs): CMD runs as SUDO_UID/SUDO_GID with that user's groups,
    and its tool calls still work; running it as root takes `--user root`."""
    user = User(group=api_group)
    d = None
    try:
        if mode == "daemon":
            d = DaemonProc(str(tmp_path), test_root).start()
            env = dict(d.env)
        else:
            env = dict(os.environ, AGENTD_SOCKET=str(tmp_path / "no-daemon.sock"))
        sudo = dict(env, SUDO_UID=str(user.uid), SUDO_GID=str(user.gid), SUDO_USER=user.name)
        r = subprocess.run(agentd_cmd() + ["run", "--", "bash", "-c", AS_WHO, "a", *agentd_cmd()], env=sudo,
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split("\n")
        assert lines[:2] == [str(user.uid), str(user.gid)], r.stdout
        assert sorted(map(int, lines[2].split())) == sorted(user.groups), r.stdout
        assert lines[3].startswith("tool=") and "/" in lines[3] and lines[4] == str(user.uid), (r.stdout, r.stderr)
        # Root only when asked for, by name.
        r = subprocess.run(agentd_cmd() + ["run", "--user", "root", "--", "id", "-u"], env=sudo, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr
        if mode == "daemon":
            r = subprocess.run(agentd_cmd() + ["run", "--user", user.name, "--", "id", "-u"], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=60)
            assert (r.returncode, r.stdout) == (0, f"{user.uid}\n"), r.stderr
    finally:
        if d is not None:
            d.cleanup()
        user.remove()


# --- the identity adapter itself, on the real kernel --------------------------------------
def test_pidfd_identity_refuses_a_recycled_pid():
    from agentd.errors import ProcessGone
    from agentd.kernel.pidfd import Proc
    first = subprocess.Popen(["sleep", "60"])
    held = Proc.open(first.pid)
    other = None
    try:
        held.verify()
        first.kill()
        first.wait()
        with pytest.raises(ProcessGone):
            held.verify()
        other = spawn_with_pid(held.pid, ["sleep", "60"])    # the same number, another process
        assert not held.alive()
        with pytest.raises(ProcessGone):
            held.verify()
    finally:
        held.close()
        stop(first, other)


@pytest.mark.parametrize("peerpidfd", [True, False])
def test_peer_identity_from_so_peerpidfd_or_its_fallback(monkeypatch, peerpidfd):
    """SO_PEERPIDFD where the kernel has it; else pidfd_open of the SO_PEERCRED pid."""
    import socket
    from agentd.api.server import peer_cred
    from agentd.kernel import pidfd
    if not peerpidfd:
        monkeypatch.setattr(pidfd, "SO_PEERPIDFD", 0x7fff)     # an option no kernel has
    srv = socket.socket(socket.AF_UNIX)
    d = tempfile.mkdtemp()
    path = os.path.join(d, "s")
    srv.bind(path)
    srv.listen()
    client = subprocess.Popen([sys.executable, "-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); "
                               "s.connect(sys.argv[1]); time.sleep(60)", path])
    try:
        conn, _ = srv.accept()
        pid, uid, _ = peer_cred(conn)
        with pidfd.Proc.of_peer(conn, pid) as peer:
            assert peer.source == ("SO_PEERPIDFD" if peerpidfd else "pidfd_open")
            assert (peer.pid, uid) == (client.pid, 0)
            peer.verify()
            client.kill()
            client.wait()
            assert not peer.alive()
        conn.close()
    finally:
        stop(client)
        srv.close()
        shutil.rmtree(d)


def test_peer_that_exited_before_accept_gets_no_identity():
    """The connecting process exits (reaped) before the daemon accepts: whatever now holds
    its pid is not taken for the peer."""
    import socket
    from agentd.errors import ProcessGone
    from agentd.kernel.pidfd import Proc
    d = tempfile.mkdtemp()
    path = os.path.join(d, "s")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    stranger = None
    try:
        client = subprocess.run([sys.executable, "-c", "import socket,sys,os; s=socket.socket(socket.AF_UNIX); "
                                 "s.connect(sys.argv[1]); print(os.getpid())", path],
                                capture_output=True, text=True, check=True)
        stranger = spawn_with_pid(int(client.stdout), ["sleep", "60"])
        conn, _ = srv.accept()
        with pytest.raises(ProcessGone):
            Proc.of_peer(conn, int(client.stdout))
        conn.close()
    finally:
        stop(stranger)
        srv.close()
        shutil.rmtree(d)
