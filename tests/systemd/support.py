"""Helpers for the systemd tier: commands, `systemctl show`, waiting, agentd's API."""

import json
import os
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = "agentd.service"
AGENTD = "/usr/local/bin/agentd"
# Emulated guest: a Python start costs seconds; a daemon start with its BPF programs, a minute.
SLOW = 240


# What a user's shell has: not the test session's pointer to the checkout's policies
# (tests/conftest.py), so every command reads the installed /etc/agentd/policies.
ENV = {k: v for k, v in os.environ.items() if k != "AGENTD_POLICY_DIR"}


def sh(cmd, check=True, timeout=SLOW, **kw):
    """Run a shell command as a user would; a failure shows its output."""
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"`{cmd}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def show(*props, unit=UNIT):
    out = sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(pred, timeout, what, step=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def main_pid():
    return int(show("MainPID")["MainPID"])


def running(other_than=None):
    """The unit is active (running) with a main process, other than `other_than` if given.

    One `systemctl show` for all three: read apart, a daemon that dies between the reads
    looks like a running unit with a new MainPID (0) before systemd has restarted it."""
    s = show("ActiveState", "SubState", "MainPID")
    pid = int(s["MainPID"])
    return s["ActiveState"] == "active" and s["SubState"] == "running" and pid > 0 and pid != other_than


def status():
    """agentd's own view (`agentd status --json`), or None while no daemon serves."""
    r = sh(f"{AGENTD} status --json", check=False)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def agent_ids():
    snap = status()
    return sorted(a["agent"] for a in snap["agents"]) if snap else None


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def journal(*args):
    return sh("journalctl --no-pager -u agentd " + " ".join(args)).stdout


def systemd_version():
    return int(sh("systemctl --version").stdout.split()[1])


def stop_sessions(sessions):
    """Kill what is left of the background `agentd run`s a module started (each in its own
    session, so its whole process group)."""
    for p in sessions:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
