"""The Debian package as a user installs it: `apt install ./agentd_*.deb` on a host booted
with systemd, which must give what the setup script gives (a running, enabled service
that places agents), then `apt remove` (agents keep running) and `apt purge`.

The package is built on the host from this tree (tests/systemd/run.py passes it in
AGENTD_DEB: the guest has no network). This module runs before test_service.py (file
order) and purges what it installed, so the setup script's install starts on a clean host.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from .support import SLOW, UNIT, alive, sh, show, stop_sessions, wait_for

pytestmark = pytest.mark.systemd

FRONT = "/usr/bin/agentd"          # the package's, not a /usr/local one an earlier install left
CG = "/sys/fs/cgroup"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0"
# apt install returns once the postinst's start job is done, i.e. once the Type=notify daemon
# sent READY=1 (up to SLOW in the emulated guest), after byte-compiling the venv.
APT_TIMEOUT = 3 * SLOW
SESSIONS = []
# Set once the package's service runs: the tests that drive it fail at once without it
# (rather than each waiting out its own timeout for a daemon that never came).
SERVING = []


def teardown_module():
    stop_sessions(SESSIONS)
    sh(f"{APT} purge agentd", check=False, timeout=APT_TIMEOUT)
    # The agents' emptied cgroups (the daemon that would have removed them is gone with the package).
    for dirpath, dirs, _ in os.walk(f"{CG}/agentd", topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def daemon_status():
    r = sh(f"{FRONT} status --json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def service_report():
    """What systemd and the daemon said, for a failure's message."""
    return "\n".join(r.stdout + r.stderr for r in (sh(cmd, check=False) for cmd in (
        f"systemctl status {UNIT} --no-pager -l -n 0",
        f"journalctl --no-pager -u {UNIT} -n 60 -o short-monotonic",
        "ls -l /usr/sbin/policy-rc.d")))


def need_service():
    if not SERVING:
        pytest.fail("the package's service never ran (test_apt_install_enables_and_starts_the_service failed)")


def package():
    deb = os.environ.get("AGENTD_DEB", "")
    assert deb and os.path.isfile(deb), (
        f"AGENTD_DEB={deb!r} names no package: tests/systemd/run.py builds it on the host "
        "(python3 -m agentd.deploy.deb) and passes it in")
    return deb


def test_apt_install_enables_and_starts_the_service():
    deb = package()
    assert not os.path.exists(FRONT), f"{FRONT} exists before the package is installed"
    # `apt install ./file.deb`, as a user types it (apt-get for its stable output).
    t0 = time.monotonic()
    try:
        r = sh(f"cd {os.path.dirname(deb)} && {APT} install ./{os.path.basename(deb)}", check=False,
               timeout=APT_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"apt install still running after {APT_TIMEOUT} s:\n{err.stdout}\n{service_report()}")
    took = time.monotonic() - t0
    assert r.returncode == 0, f"apt install exited {r.returncode} after {took:.0f} s:\n{r.stdout}\n{r.stderr}\n{service_report()}"
    assert "install ok installed" in sh("dpkg -s agentd").stdout
    assert sh(f"systemctl is-enabled {UNIT}", check=False).stdout.strip() == "enabled"
    # The postinst's start job returns once the Type=notify daemon sent READY=1: when apt
    # is done, the service is active, not merely starting.
    s = show("FragmentPath", "ExecStart", "Type", "ActiveState", "SubState", "NRestarts", "StatusText")
    assert (s["Type"], s["ActiveState"], s["SubState"]) == ("notify", "active", "running"), (
        f"{s}\napt install took {took:.0f} s:\n{r.stdout}\n{service_report()}")
    assert os.path.realpath(s["FragmentPath"]) == "/usr/lib/systemd/system/agentd.service", s
    assert f"path={FRONT} " in s["ExecStart"], s
    assert s["StatusText"].startswith("serving") and s["NRestarts"] == "0", s
    print(f"apt install took {took:.0f} s, the daemon's start included")
    SERVING.append(True)


def test_agentd_run_is_served_by_the_packaged_daemon():
    need_service()
    snap = wait_for(daemon_status, SLOW, "the packaged daemon answering `agentd status`")
    root = snap["root"]
    # `agentd run -- true`: exit status 0, through the daemon (not standalone: its agents
    # land under the daemon's root, a standalone run under agentd.standalone/).
    sh(f"{FRONT} run -- true")
    r = sh(f"{FRONT} run --name debcheck -- cat /proc/self/cgroup")
    cg = r.stdout.strip().split("::", 1)[1]
    assert cg.startswith(f"/{root}/agents/"), (cg, root)
    doc = json.loads(sh("/usr/bin/agentd-py doctor --json").stdout)
    assert doc["policy"]["ok"] is True
    assert doc["modes"]["monitoring"]["mode"] == "bpf", doc["modes"]["monitoring"]


def test_apt_remove_stops_the_daemon_and_leaves_agents_running():
    need_service()
    mark = "/tmp/agentd-deb-agent.pid"
    p = subprocess.Popen([FRONT, "run", "--name", "debkeep", "--", "sh", "-c", f"echo $$ > {mark}; exec sleep 600"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    SESSIONS.append(p)
    wait_for(lambda: (s := daemon_status()) and any(a["agent"] == "debkeep" for a in s["agents"]),
             SLOW, "agent debkeep listed by the daemon")
    sleeper = int(wait_for(lambda: os.path.exists(mark) and open(mark).read().strip(), SLOW, "the agent's pid"))
    sh(f"{APT} remove agentd", timeout=APT_TIMEOUT)
    assert sh(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert not os.path.exists(FRONT)
    assert alive(sleeper), "apt remove killed an agent (the unit has KillMode=process)"
    assert os.path.isfile("/etc/agentd/policies/default.yaml"), "remove must keep the policies (conffiles)"
    os.kill(sleeper, signal.SIGKILL)
    os.unlink(mark)


def test_apt_purge_removes_policies_and_state():
    sh(f"{APT} purge agentd", timeout=APT_TIMEOUT)
    for path in ("/etc/agentd", "/var/lib/agentd", "/usr/lib/agentd", "/usr/lib/systemd/system/agentd.service"):
        assert not os.path.exists(path), f"{path} is left after apt purge"
    assert "could not be found" in sh(f"systemctl status {UNIT}", check=False).stderr
