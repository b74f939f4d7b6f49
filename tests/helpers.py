"""Shared helpers for agentd's tests: a real daemon on the host's cgroup v2 tree."""

import json
import shutil
import tempfile
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "agentd", "_bin", "agentd")


def agentd_cmd():
    """The `agentd` front: the compiled launcher when built, else the Python CLI."""
    if os.path.exists(LAUNCHER) and os.access(LAUNCHER, os.X_OK):
        return [LAUNCHER]
    return [sys.executable, "-m", "agentd"]


def python_cmd():
    # In the kernel tier's emulated guest every Python start costs tens of seconds; -S
    # skips site processing (the runner puts site-packages on PYTHONPATH there).
    if os.environ.get("AGENTD_KERNEL_TIER"):
        return [sys.executable, "-S", "-m", "agentd"]
    return [sys.executable, "-m", "agentd"]


def cgroup2_mount():
    from agentd.kernel.cgroupfs import find_cgroup2_mount
    return find_cgroup2_mount()


def kill_tree(fs, cg):
    """Kill every process below `cg` and remove the tree (test cleanup)."""
    if not fs.exists(cg):
        return
    try:
        fs.freeze(cg, False)
    except Exception:
        pass
    try:
        fs.kill(cg)
        fs.wait_empty(cg, 5)
    except Exception:
        pass
    fs.remove_tree(cg)


class DaemonProc:
    """`agentd daemon` as a real subprocess with its own root, socket, state and log.

    Its socket folder is outside pytest's tmp: `cleanup()` removes it. `made` lists every
    folder made in this session with the test that made it, for the end-of-session check
    (tests/conftest.py) that none is left behind."""

    made = []                         # (socket folder, PYTEST_CURRENT_TEST)

    def __init__(self, tmp, name, policy="default", extra_env=None, metrics="none"):
        self.tmp = tmp
        self.root = name
        # The socket lives where unprivileged test users can reach it (pytest's tmp is 0700).
        self.sock_dir = tempfile.mkdtemp(prefix="agentd-sock-")
        DaemonProc.made.append((self.sock_dir, os.environ.get("PYTEST_CURRENT_TEST", "?")))
        os.chmod(self.sock_dir, 0o755)
        self.socket = os.path.join(self.sock_dir, "agentd.sock")
        self.state_dir = os.path.join(tmp, "state")
        self.event_log = os.path.join(tmp, "events.jsonl")
        self.log_path = os.path.join(tmp, "daemon.log")
        self.policy = policy
        self.metrics = metrics
        self.env = dict(os.environ, AGENTD_SOCKET=self.socket, **(extra_env or {}))
        self.proc = None

    def start(self, timeout=None):
        """Start the daemon and wait for its socket; on failure nothing is left running
        or on disk (callers often start it outside their try/finally)."""
        try:
            return self._start(timeout)
        except BaseException:
            self.cleanup()
            raise

    def _start(self, timeout):
        if timeout is None:
            # Python runs ~5x slower in the kernel tier's emulated guest.
            timeout = 180 if os.environ.get("AGENTD_KERNEL_TIER") else 20
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            python_cmd() + ["daemon", "--root", self.root, "--socket", self.socket, "--state-dir", self.state_dir,
                            "--event-log", self.event_log, "--metrics-listen", self.metrics, "--policy", self.policy],
            stdout=self._log, stderr=self._log, env=self.env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log()}")
            try:
                self.request({"op": "hello"})
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not come up: {self.log()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def events(self):
        from agentd.eventlog import read_events
        return list(read_events(self.event_log))

    def wait_event(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no matching event in {self.events()[-5:]}")

    def request(self, obj, raw=None):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.socket)
            s.sendall(raw if raw is not None else (json.dumps({"v": 1, **obj}) + "\n").encode())
            buf = b""
            while True:
                while b"\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                line, nl, rest = buf.partition(b"\n")
                if not nl or b'"notice":"keepalive"' not in line:
                    break
                buf = rest            # a slow request: the daemon says it is still at it
        return json.loads(line) if line else None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def run(self, script, *args, name=None, timeout=60, env=None, agent_class=None, **kw):
        """`agentd run` a bash script as an agent; returns CompletedProcess."""
        cmd = agentd_cmd() + ["run"]
        if name:
            cmd += ["--name", name]
        if agent_class:
            cmd += ["--class", agent_class]
        cmd += ["--", "bash", "-c", script, "agent", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(self.env, **(env or {})), cwd=REPO, **kw)
