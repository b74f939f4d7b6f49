"""Attacks on the limits agentd sets beyond memory and CPU (egress, disk I/O), tried for real
against a daemon by an unprivileged user's agent or by a user who owns a path the policy names.

Each test is named `test_attack_<row>_<what>` (bench/reliability.py collects them by that
name); the users are real, unprivileged, made for the test and removed after it.
"""

import itertools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from agentd.errors import AgentdError
from agentd.kernel import blkio
from tests.helpers import REPO, DaemonProc, agentd_cmd, kill_tree
from tests.net_support import SEND, HostPair

_seq = itertools.count()
MBIT = 125_000


@pytest.fixture
def user():
    """(name, uid, gid) of a new unprivileged user, removed after."""
    name = f"agtl{os.getpid()}x{next(_seq)}"
    subprocess.run(["useradd", "-M", "-N", "-r", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    yield name, pw.pw_uid, pw.pw_gid
    subprocess.run(["userdel", name], capture_output=True)
    assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"user {name} left behind"


@pytest.fixture
def shared_dir():
    """A folder every user can read (pytest's tmp is root's alone)."""
    d = tempfile.mkdtemp(prefix="agentd-limits-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- 14: a tool call's egress rate outlived by what it leaves behind -----------------------
EGRESS_POLICY = """\
version: 1
network: {{devices: [{dev}]}}
agent_classes:
  normal: {{}}
tool_classes:
  normal: {{priority: 50}}
  fetch: {{priority: 50, network: {{egress: 10Mbit}}, stragglers: wait}}
detection:
  enabled: false
"""

# The agent's tool call leaves a sender in the background and ends at once; the sender
# waits until the call's entry would have lapsed (the stage's 30 s linger, ended by the
# agent's next call) and sends.
STRAGGLER = """\
#!/bin/sh
( sleep 33; exec /usr/bin/python3 -S {send} {ip} {port} 3 ) >/dev/null 2>&1 &
exit 0
"""
AGENT = """\
#!/bin/sh
"$1" tool --class fetch -- {straggler} || exit 9
sleep 31
"$1" tool -- true          # any later call (or a scrape, or the tick) expires what lingers
sleep 15
"""


def test_attack_14_a_calls_egress_rate_holds_what_it_leaves_running(tmp_path, test_root, user, shared_dir):
    """`stragglers: wait` keeps a call's leftover processes in its cgroup. Its egress entry
    (BPF map entry, or nftables rule, and htb class) was cleared 30 s after the call ended
    whatever still ran there, so a background sender of the call then went out at its
    agent's rate, here none (measured > 20 Mbit/s for a 10 Mbit/s class before the fix)."""
    name, uid, gid = user
    pair = HostPair(f"agentd-lim-{os.getpid()}", os.getpid() + 7)
    d = None
    try:
        send = os.path.join(shared_dir, "send.py")
        with open(send, "w") as f:
            f.write(SEND)
        straggler = os.path.join(shared_dir, "straggler.sh")
        agent = os.path.join(shared_dir, "agent.sh")
        with open(straggler, "w") as f:
            f.write(STRAGGLER.format(send=send, ip=pair.RX_IP, port=5311))
        with open(agent, "w") as f:
            f.write(AGENT.format(straggler=straggler))
        for p in (send, straggler, agent):
            os.chmod(p, 0o755)
        policy = tmp_path / "policy.yaml"
        policy.write_text(EGRESS_POLICY.format(dev=pair.dev))
        d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
        recv = pair.receive(1, port=5311)
        r = subprocess.run(agentd_cmd() + ["run", "--user", name, "--name", "strag", "--", agent, agentd_cmd()[0]],
                           capture_output=True, text=True, timeout=120, env=d.env, cwd=REPO)
        assert r.returncode == 0, r.stderr
        out, err = recv.communicate(timeout=60)
        got = json.loads(out.strip().splitlines()[-1])[0]
        assert 0 < got <= 1.5 * 10 * MBIT, got / MBIT        # unlimited: ~10 Gbit/s here
    finally:
        if d is not None:
            d.cleanup()
        pair.close()


# --- 15: a disk named by a path that a user can redirect ------------------------------------
def test_attack_15_a_user_cannot_point_an_io_devices_path_at_another_disk(user, shared_dir):
    """The policy names a disk by a path (`io.devices`); the daemon resolves it as root at
    every start and reload, writes its agents' io.max for that disk and turns iocost on
    for it. Below a folder a user owns (a home directory), that user could swap the path
    for a link to any other disk (here /dev/zram0 or a loop device): the limits leave the
    disk the agents write to, and agentd changes a disk the policy never named. Such a
    path is refused where the policy is loaded, with the owner named, before and after the
    swap; a path only root controls still resolves."""
    name, uid, gid = user
    other = next((d for d in ("/dev/zram0", "/dev/loop0", "/dev/loop1") if os.path.exists(d)), None)
    if other is None:
        pytest.fail("this test needs a second block device node (/dev/zram0 or a loop device)")
    home = os.path.join(shared_dir, "home")
    os.mkdir(home)
    os.chown(home, uid, gid)
    work = os.path.join(home, "work")
    os.mkdir(work)
    os.chown(work, uid, gid)
    here = os.stat(shared_dir).st_dev
    assert blkio.resolve(shared_dir).dev == f"{os.major(here)}:{os.minor(here)}"   # root's: fine
    # A root-owned folder every user may write in (a shared mount point) is fine as the
    # path's end, where no one can replace it; on the way to a path it is not.
    open_dir = os.path.join(shared_dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    assert blkio.resolve(open_dir).dev == f"{os.major(here)}:{os.minor(here)}"
    os.mkdir(os.path.join(open_dir, "sub"))
    with pytest.raises(AgentdError, match="writable by users other than root"):
        blkio.resolve(os.path.join(open_dir, "sub"))
    with pytest.raises(AgentdError, match=f"belongs to uid {uid}"):
        blkio.resolve(work)
    # The user swaps the folder for a link to another disk, with no privilege at all.
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "sh", "-c",
                        f'mv "{work}" "{work}.old" && ln -s {other} "{work}"'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(AgentdError, match=f"belongs to uid {uid}"):
        blkio.resolve(work)
    policy = os.path.join(shared_dir, "policy.yaml")
    with open(policy, "w") as f:
        f.write(f"version: 1\nio:\n  devices: ['{work}']\n")
    r = subprocess.run([*agentd_cmd(), "policy", "check", policy], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode != 0 and f"{policy}:3" in r.stdout + r.stderr and f"uid {uid}" in r.stdout + r.stderr, \
        (r.stdout, r.stderr)


# --- 16: an agent named as one that just ended runs without its class's egress rate ------
AGENT_CLASS_POLICY = """\
version: 1
daemon: {{api_group: {group}}}
network: {{devices: [{dev}]}}
agent_classes:
  normal: {{network: {{egress: 10Mbit}}}}
detection:
  enabled: false
"""

# A member of the API group (no root) starts an agent whose one process sends for 3 s,
# ends it, and at once starts another of the same name doing the same.
SAME_NAME = r"""
import json, os, socket, sys
sock, send, ip, port = sys.argv[1:5]

def final(f):
    while True:
        m = json.loads(f.readline())
        if "ok" in m:
            return m

for _ in range(2):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os.execv("/usr/bin/python3", ["python3", "-S", send, ip, port, "3"])
    os.close(r)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    f = s.makefile()
    s.sendall((json.dumps({"v": 1, "op": "run_start", "pid": pid, "name": "same", "argv": ["x"]}) + "\n").encode())
    m = final(f)
    assert m["ok"], m
    os.write(w, b"1")
    os.waitpid(pid, 0)
    s.sendall((json.dumps({"v": 1, "op": "run_done", "agent": m["agent"], "status": {"exit": 0}}) + "\n").encode())
    assert final(f)["ok"]
    s.close()
"""


def test_attack_16_an_agent_named_as_one_that_just_ended_keeps_its_classs_rate(tmp_path, test_root, user,
                                                                               shared_dir):
    """The egress stage kept its entries by cgroup path, and an ended agent's linger 30 s:
    a new agent of the same name (its creator's choice, or the same start second) found
    the path taken and got no entry at all, and the old one's expiry would then have
    cleared the new one's. Measured before the fix: the first agent at its 10 Mbit/s, the
    second at line rate."""
    name, uid, gid = user
    group = f"agtlg{os.getpid()}x{next(_seq)}"
    subprocess.run(["groupadd", "-r", group], check=True, capture_output=True)
    subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)
    gidg = int(subprocess.run(["getent", "group", group], capture_output=True, text=True).stdout.split(":")[2])
    pair = HostPair(f"agentd-lim-{os.getpid()}", os.getpid() + 11)
    d = None
    try:
        send = os.path.join(shared_dir, "send.py")
        with open(send, "w") as f:
            f.write(SEND)
        script = os.path.join(shared_dir, "same.py")
        with open(script, "w") as f:
            f.write(SAME_NAME)
        for p in (send, script):
            os.chmod(p, 0o644)
        policy = tmp_path / "policy.yaml"
        policy.write_text(AGENT_CLASS_POLICY.format(group=group, dev=pair.dev))
        d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
        recv = pair.receive(2, port=5312)
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={gid},{gidg}",
                            "/usr/bin/python3", "-S", script, d.socket, send, pair.RX_IP, "5312"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out, err = recv.communicate(timeout=60)
        rates = json.loads(out.strip().splitlines()[-1])
        assert len(rates) == 2 and all(0 < x <= 1.5 * 10 * MBIT for x in rates), [x / MBIT for x in rates]
    finally:
        if d is not None:
            d.cleanup()
        pair.close()
        subprocess.run(["groupdel", group], capture_output=True)


# --- 17: a tool call that names a container runtime outlives its agent ----------------------
OUTLIVE = """\
#!/bin/sh
"$1" tool -- sh -c 'echo $$ > {pidfile}; sleep 300 # podman stop x' >/dev/null 2>&1 &
while [ ! -s {pidfile} ]; do sleep 0.05; done
exit 0
"""


def test_attack_17_a_call_naming_a_container_runtime_does_not_outlive_its_agent(tmp_path, test_root, user,
                                                                                 shared_dir, cgfs):
    """At an agent's end agentd spares the calls that stop its containers (killing a
    `podman stop` breaks the runtime), recognised by the call's argv or program name: both
    the agent's to choose. An agent with no container at all put ` podman ` in a call's
    command line and that call ran on after `agentd run` returned, for as long as it
    liked. A call is spared only where a container ran for the agent (in its container
    parent, which only root can fill)."""
    name, uid, gid = user
    pidfile = os.path.join(shared_dir, "pid")
    agent = os.path.join(shared_dir, "agent.sh")
    with open(agent, "w") as f:
        f.write(OUTLIVE.format(pidfile=pidfile))
    os.chmod(agent, 0o755)
    os.chmod(shared_dir, 0o777)                # the agent's user writes its pid file there
    d = DaemonProc(str(tmp_path), test_root).start()
    try:
        r = subprocess.run(agentd_cmd() + ["run", "--user", name, "--name", "outlive", "--", agent,
                                           agentd_cmd()[0]],
                           capture_output=True, text=True, timeout=60, env=d.env, cwd=REPO)
        assert r.returncode == 0, r.stderr
        with open(pidfile) as f:
            pid = int(f.read())
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        assert not alive, f"the agent's call {pid} runs on after its agent ended"
        assert not cgfs.exists(f"{test_root}/agents/outlive"), "the ended agent's cgroup is left"
    finally:
        d.cleanup()
        kill_tree(cgfs, test_root)             # what outlived the agent, before its user goes
