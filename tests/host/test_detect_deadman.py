"""Stop-at-exec detection with a stopped daemon: a hung daemon never hangs an agent.

A real daemon with BPF detection and an agent whose loop runs `bash -c` children one
after the other (each records the cgroup it runs in). The daemon is SIGSTOPped: the
child that execs right after is still stopped (the heartbeat is fresh) and the exec
watchdog resumes it after detection.stop_timeout_s; the later ones are not stopped at
all. SIGCONT: detection places calls again.
"""

import os
import signal
import subprocess
import time

from tests.helpers import REPO, DaemonProc, agentd_cmd

# Long enough that the agent surely execs a child between the daemon's last beat and
# the bound (the child stopped "right at the daemon's stop"), even on a busy machine.
STOP_TIMEOUT_S = 3

AGENT = r'''
log="$1"; fifo="$2"; halt="$3"
exec 9<>"$fifo"
while [ ! -e "$halt" ]; do
    bash -c 'while read -r l; do case $l in 0::*) echo "$l" >>"$0";; esac; done </proc/self/cgroup' "$log"
    read -t 0.05 -u 9 || true
done
'''


def _policy(tmp_path):
    with open(os.path.join(REPO, "policies", "default.yaml")) as f:
        text = f.read()
    key = "  stop_timeout_s: 1.0"
    assert key in text
    path = tmp_path / "deadman.yaml"
    path.write_text(text.replace(key, f"  stop_timeout_s: {STOP_TIMEOUT_S}"))
    return str(path)


def _lines(path):
    try:
        with open(path) as f:
            return [l for l in f.read().splitlines() if l.startswith("0::")]
    except FileNotFoundError:
        return []


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_stopped_daemon_does_not_hang_the_agents_tool_calls(tmp_path, test_root):
    d = DaemonProc(str(tmp_path), test_root, policy=_policy(tmp_path))
    d.start()
    log, fifo, halt = tmp_path / "cg.log", tmp_path / "fifo", tmp_path / "halt"
    os.mkfifo(fifo)
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "dm", "--", "bash", "-c", AGENT, "agent",
                                             str(log), str(fifo), str(halt)],
                             env=d.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped = False
    main = f"0::/{test_root}/agents/dm/main"
    tools = f"0::/{test_root}/agents/dm/tools/"
    try:
        # Detection places the calls while the daemon runs.
        _wait_for(lambda: sum(l.startswith(tools) for l in _lines(log)) >= 3, 60, "no call was placed")
        assert d.request({"op": "status"})["modes"]["detection"] == "bpf-stop"

        os.kill(d.proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        n0 = len(_lines(log))
        # The agent goes on: the call held at the daemon's stop is released by the exec
        # watchdog, the next ones are not held. Unplaced, they run in main.
        _wait_for(lambda: len(_lines(log)) >= n0 + 10, 60, "the agent hangs on a stopped daemon")
        t_resumed = time.monotonic() - t0
        assert main in _lines(log)[n0:]
        _wait_for(lambda: "did not resume" in d.log(), 30, "the exec watchdog resumed nothing")
        said = [l for l in d.log().splitlines() if "exec-watchdog" in l]
        assert said and "resumed them: [" in said[0], said

        os.kill(d.proc.pid, signal.SIGCONT)
        stopped = False
        n1 = len(_lines(log))
        # Back to placing: a call after the daemon resumed runs in its own cgroup again.
        _wait_for(lambda: any(l.startswith(tools) for l in _lines(log)[n1:]), 60,
                  "detection did not resume after SIGCONT")
        assert d.request({"op": "hello"})["ok"]
        st = d.request({"op": "status"})
        assert st["modes"]["detection"] == "bpf-stop"
        halt.write_text("")
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        print(f"agent went on {t_resumed:.2f} s after the daemon's SIGSTOP (bound {STOP_TIMEOUT_S} s)")
    finally:
        if stopped:
            os.kill(d.proc.pid, signal.SIGCONT)
        halt.write_text("")
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        d.cleanup()


def _children(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_restarted_daemon_places_and_resumes_a_call_left_stopped(tmp_path, test_root, cgfs):
    """Worst case: daemon and exec watchdog both die (kill -9) while a call is held
    stopped at exec. The next daemon finds it stopped in the agent's main cgroup, places
    it in its own tool-call cgroup and resumes it."""
    d = DaemonProc(str(tmp_path), test_root, policy=_policy(tmp_path))
    d.start()
    log, fifo, halt = tmp_path / "cg.log", tmp_path / "fifo", tmp_path / "halt"
    os.mkfifo(fifo)
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "rs", "--", "bash", "-c", AGENT, "agent",
                                             str(log), str(fifo), str(halt)],
                             env=d.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main_cg = f"{test_root}/agents/rs/main"
    tools = f"0::/{test_root}/agents/rs/tools/"
    held = None
    try:
        _wait_for(lambda: sum(l.startswith(tools) for l in _lines(log)) >= 3, 60, "no call was placed")
        [dog] = [p for p in _children(d.proc.pid) if "agentd.kernel.exec_watchdog" in _cmdline(p)]
        os.kill(dog, signal.SIGKILL)
        os.kill(d.proc.pid, signal.SIGSTOP)
        n0 = len(_lines(log))

        def find_held():
            nonlocal held
            procs = set(cgfs.procs(main_cg))
            for pid in procs:
                if _state(pid) == "T":
                    held = pid
            return held is not None
        _wait_for(find_held, 30, "no call was held stopped after the daemon's stop")
        d.kill9()
        time.sleep(0.5)
        assert _state(held) == "T", "nothing but the next daemon can resume it"
        assert len(_lines(log)) == n0

        d.start()
        _wait_for(lambda: len(_lines(log)) >= n0 + 3, 60, "the call left stopped was never resumed")
        assert _lines(log)[n0].startswith(tools), "the call left stopped ran unplaced"
    finally:
        if held is not None and _state(held) == "T":
            os.kill(held, signal.SIGCONT)
        halt.write_text("")
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        d.cleanup()
