"""Run agents from replay schedules concurrently under one mode, inside the kernel-tier VM.

Modes (the same agents, scaled the same way, the same budget):
- none:   agents are sibling cgroups under one parent whose memory.max is the budget; the
          kernel's OOM killer decides. Each agent cgroup has memory.oom.group=1 (what container
          runtimes set on cgroup v2), so an OOM kill takes the agent down like a container.
- static: as none, plus each agent's own memory.max = budget / number of agents.
- agentd: the parent's memory.max is the budget; below it a fresh `agentd daemon` (shipped
          policy, no per-run tuning) owns `<parent>/agentd`; agents start with `agentd run
          --class high|low` and their tool calls go through `agentd tool`.
A `budget` of None leaves the parent unlimited (the solo runs).
"""

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from agentd.errors import KernelError
from agentd.kernel.cgroupfs import PROCS, CgroupFS, find_cgroup2_mount
from agentd.kernel.procfs import cpu_times
from .trace import gaps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alloc.c")
LAUNCHER = os.path.join(REPO, "agentd", "_bin", "agentd")
POLICY = os.path.join(REPO, "policies", "multi-tenant.yaml")
CONTROLLERS = ("memory", "cpu", "pids")
MODES = ("none", "static", "agentd")
ACTIONS = ("throttle", "freeze", "kill", "queue")

_seq = itertools.count()


def cgroup_root():
    """The cgroup v2 mount the runs create their cgroups in (the one with controllers:
    /sys/fs/cgroup in the kernel tier's guest, whatever the host mounts elsewhere)."""
    root = find_cgroup2_mount()
    if root is None:
        raise SystemExit("replay: no cgroup v2 hierarchy is mounted; the replay needs one with the "
                         "memory, cpu and pids controllers (run it in the kernel tier's VM)")
    return root


def build_alloc(dest_dir):
    """Compile alloc.c into dest_dir (once) and add the `bash` alias the agent starts tool
    calls through; returns (alloc path, alias path)."""
    os.makedirs(dest_dir, exist_ok=True)
    exe = os.path.join(dest_dir, "alloc")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(SOURCE):
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", exe + ".tmp", SOURCE], check=True)
        os.replace(exe + ".tmp", exe)
    alias_dir = os.path.join(dest_dir, "shim")
    os.makedirs(alias_dir, exist_ok=True)
    alias = os.path.join(alias_dir, "bash")
    if not os.path.islink(alias):
        os.symlink(exe, alias)
    return exe, alias


def localize(exe, dest_dir):
    """Copies of the workload program and the agentd launcher in `dest_dir` (the guest's
    tmpfs), with the `bash` alias; returns (alloc path, alias path). The guest's root is
    the host's file system over 9p, which keeps no page cache between execs: every tool
    call would read both binaries over 9p again (~100 ms of wall per call for the launcher
    alone, bench/percall.py), a cost no installed agentd has. Every mode runs the copies."""
    global LAUNCHER
    os.makedirs(dest_dir, exist_ok=True)
    local = os.path.join(dest_dir, "alloc")
    shutil.copy2(exe, local)
    alias_dir = os.path.join(dest_dir, "shim")
    os.makedirs(alias_dir, exist_ok=True)
    alias = os.path.join(alias_dir, "bash")
    if not os.path.islink(alias):
        os.symlink(local, alias)
    if os.access(LAUNCHER, os.X_OK):
        copy = os.path.join(dest_dir, "agentd")
        shutil.copy2(LAUNCHER, copy)
        LAUNCHER = copy
    return local, alias


def agentd_front():
    if os.access(LAUNCHER, os.X_OK):
        return [LAUNCHER]
    return [sys.executable, "-m", "agentd"]


@dataclass
class AgentSpec:
    name: str                   # unique within a run (cgroup / agent name)
    trace: str
    priority: str               # "high" | "low"
    schedule: object            # scaled trace.Schedule
    delay: float = 0.0          # seconds after the run starts
    measure_latency: bool = False
    barrier: int | None = None  # this many agents start their largest calls together and
                                # hold them at their peaks until all are there
    barrier_extra: float = 0.0  # after the start barrier, wait this much more (the largest
                                # steps of the calls are then due at the same moment)


@dataclass
class AgentResult:
    name: str
    trace: str
    priority: str
    completed: bool
    seconds: float | None       # agent start -> done (None when lost)
    lost_reason: str | None
    calls: int                  # tool calls started
    calls_planned: int
    calls_killed: int           # ended by SIGKILL (kernel OOM killer or agentd)
    calls_failed: int           # other non-zero ends (e.g. the launcher's 125: agentd refused it)
    actions: dict = field(default_factory=dict)    # action -> number of tool calls it hit
    peak_call_start: float | None = None          # s after agent start when its largest call began
    peak_bytes: int | None = None                 # memory.peak of the agent's cgroup (if known)
    latencies_us: list = field(default_factory=list)
    exit_status: int | None = None
    sync_wait: float | None = None                # seconds the agent waited at the sync point (not counted)
    frozen_s: float = 0.0                         # seconds its tool calls spent frozen by agentd
    queued_s: float = 0.0                         # seconds its tool calls waited in admission
    calls_s: float = 0.0                          # seconds its tool calls ran (agentd's wall_s, summed)


BARRIER_TIMEOUT_S = 300
# How long a call holds its peak for the others. The calls' largest steps are due at the
# same moment (barrier_extra); the hold absorbs how long each takes to touch its memory, so
# where every call gets there, they all hold at once (the line-up). A call that agentd keeps
# waiting at its start, or froze, does not come: the ones there go on after this long (the
# wait is not counted either way).
HOLD_TIMEOUT_S = 5.0


def write_schedule(spec, run_dir, alias, tool_prefix, barrier_dir=None):
    """Schedule, argv and profile files of one agent; returns the schedule path."""
    d = os.path.join(run_dir, spec.name)
    os.makedirs(d, exist_ok=True)
    gap_list, tail = gaps(spec.schedule)
    lines = [f"baseline {spec.schedule.baseline}"]
    for i, (call, gap) in enumerate(zip(spec.schedule.calls, gap_list)):
        if barrier_dir is not None and spec.barrier and i == spec.schedule.peak_call:
            lines.append(f"barrier {barrier_dir} {spec.name} {spec.barrier} {BARRIER_TIMEOUT_S} "
                         f"{spec.barrier_extra:.6f}")
            lines.append(f"hold {barrier_dir}-hold {spec.name} {spec.barrier} {HOLD_TIMEOUT_S}")
        argv = [*tool_prefix, alias, "-c", call.command.replace("\0", " ") or "true"]
        argv_file, prof_file = os.path.join(d, f"c{i}.argv"), os.path.join(d, f"c{i}.prof")
        with open(argv_file, "wb") as f:
            f.write(b"\0".join(a.encode() for a in argv) + b"\0")
        with open(prof_file, "w") as f:
            f.write(f"{call.duration:.6f}\n")
            f.writelines(f"{off:.6f} {b}\n" for off, b in call.steps)
        lines.append(f"call {gap:.6f} {argv_file} {prof_file}")
    lines.append(f"tail {tail:.6f}")
    path = os.path.join(d, "schedule")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def parse_result(path):
    """(start, done or None, [(i, t_start, t_end, wait_status)], seconds waited at sync points)
    from an agent's RESULT."""
    start, done, calls, waited = None, None, [], 0.0
    try:
        with open(path) as f:
            for line in f:
                w = line.split()
                if not w:
                    continue
                if w[0] == "start":
                    start = float(w[1])
                elif w[0] == "done":
                    done = float(w[1])
                elif w[0] == "call" and len(w) == 5:
                    calls.append((int(w[1]), float(w[2]), float(w[3]), int(w[4])))
                elif w[0] == "sync":
                    waited += float(w[1])
    except FileNotFoundError:
        pass
    return start, done, calls, waited


def call_killed(status, via_launcher):
    """A call's wait status says SIGKILL: directly, or as the launcher's exit code 128+9."""
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGKILL
    return via_launcher and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGKILL


def time_lost(events, agent):
    """(frozen, queued, ran): seconds an agent's tool calls spent frozen by agentd, waiting
    in admission, and running, from the daemon's tool_end records (a freeze that was never
    thawed lasts until the call's end)."""
    frozen = queued = ran = 0.0
    for e in events:
        if e.get("event") != "tool_end" or e.get("agent") != agent:
            continue
        ran += e.get("wall_s") or 0.0
        for a in e.get("actions") or ():
            if a.get("action") == "queue":
                queued += a.get("seconds") or 0.0
            elif a.get("action") == "freeze":
                frozen += a["seconds"] if "seconds" in a else max(e.get("ts", 0) - a.get("ts", 0), 0.0)
    return round(frozen, 3), round(queued, 3), round(ran, 3)


def read_latencies(path):
    try:
        with open(path) as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


ZRAM = "/sys/block/zram0"


def zram_reset():
    """Start the zram swap's high-water mark (mm_stat mem_used_max) from now, where there is one."""
    try:
        with open(os.path.join(ZRAM, "mem_used_max"), "w") as f:
            f.write("0")
    except OSError:
        pass


def zram_used_max():
    """The most memory the zram swap used since zram_reset() (bytes, compressed pages and
    their metadata): memory outside the budget's cgroup that swapped pages took. None
    without zram."""
    try:
        with open(os.path.join(ZRAM, "mm_stat")) as f:
            return int(f.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """How busy the guest's CPUs were during a run: the busy share of every whole second
    (from /proc/stat), summarised as mean, p95 and max. Memory is meant to bind in the
    benchmark, so a run whose CPUs were near full measures the CPUs instead: this says which."""

    def __init__(self, period=1.0, read=cpu_times):
        self.period, self.read = period, read
        self.shares, self.first, self.last, self.t = [], None, None, None

    def start(self):
        self.first = self.last = self.read()
        self.t = time.monotonic()

    def tick(self, final=False):
        now = time.monotonic()
        if self.last is None or (now - self.t < self.period and not final):
            return
        cur = self.read()
        db, dt = cur[0] - self.last[0], cur[1] - self.last[1]
        if dt > 0 and (now - self.t >= self.period / 2):
            self.shares.append(db / dt)
        self.last, self.t = cur, now

    def summary(self):
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        xs = sorted(self.shares)
        mean = (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])
        return {"mean": round(mean, 3), "p95": round(xs[int(0.95 * (len(xs) - 1))], 3) if xs else None,
                "max": round(xs[-1], 3) if xs else None}


class AgentdHost:
    """One `agentd daemon` for a whole benchmark (its start takes a minute in the emulated
    guest): it owns `<parent>/agentd`; each run sets the parent's memory.max (its budget)."""

    def __init__(self, fs, work_dir, state_dir, log):
        self.fs, self.log = fs, log
        self.parent = f"agentd-replay-{os.getpid()}-agentd"
        self.run_dir = os.path.join(work_dir, self.parent)
        self.barrier_dir = os.path.join(self.run_dir, "barrier")
        self.state_dir = state_dir
        self.daemon = None

    def start(self, timeout=600):
        os.makedirs(self.run_dir, exist_ok=True)
        self.fs.enable_controllers("", CONTROLLERS)
        self.fs.mkdir(self.parent, exist_ok=False)
        self.fs.enable_controllers(self.parent, CONTROLLERS)
        # The run dir is the host's filesystem over 9p, which takes no unix sockets (ENXIO):
        # the socket lives in the guest's own /tmp.
        self.sock_dir = tempfile.mkdtemp(prefix="agentd-replay-")
        self.socket = os.path.join(self.sock_dir, "agentd.sock")
        self.event_log = os.path.join(self.run_dir, "events.jsonl")
        self._dlog = open(os.path.join(self.run_dir, "daemon.log"), "w")
        env = dict(os.environ, AGENTD_SOCKET=self.socket, PYTHONPATH=REPO)
        t0 = time.monotonic()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "agentd", "daemon", "--root", f"{self.parent}/agentd", "--socket", self.socket,
             "--state-dir", self.state_dir, "--event-log", self.event_log, "--metrics-listen", "none",
             "--policy", POLICY], stdout=self._dlog, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        # Ready once it logs daemon_start (the socket is bound earlier, before the hooks start).
        while not any(e.get("event") == "daemon_start" for e in self.events()):
            if self.daemon.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"agentd daemon did not start in {timeout} s; see {self._dlog.name}")
            time.sleep(0.5)
        self.start_seconds = time.monotonic() - t0
        self.log(f"agentd daemon ready in {self.start_seconds:.0f} s")
        return self

    def set_budget(self, budget, timeout=60):
        """Set the parent's memory.max and wait until the daemon has sized itself to it
        (it re-reads the limit above its root every sweep and logs a memory_size event)."""
        # What we last wrote, not what memory.max reads back (the kernel rounds to pages).
        current = getattr(self, "budget", None)
        if current == (budget or None):
            return
        self.budget = budget or None
        seen = len(self.events())
        self.fs.write(self.parent, "memory.max", str(budget) if budget else "max")
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if min(budget or ram, ram) == min(current or ram, ram):
            return                      # above the RAM either way: nothing for the daemon to see
        deadline = time.monotonic() + timeout
        while not any(e.get("event") == "memory_size" for e in self.events()[seen:]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agentd daemon did not follow the budget {budget} in {timeout} s")
            time.sleep(0.2)

    def events(self):
        from agentd.eventlog import read_events
        return list(read_events(self.event_log))

    def stop(self):
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.daemon is not None:
            self._dlog.close()
        if self.fs.exists(self.parent):
            self.fs.freeze(self.parent, False)
            self.fs.destroy(self.parent, 30)
        shutil.rmtree(getattr(self, "sock_dir", ""), ignore_errors=True)


class Group:
    """One run: a parent cgroup with the budget, the agents, and (agentd) the daemon."""

    def __init__(self, mode, specs, budget, work_dir, exe, alias, host=None, log=None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if (mode == "agentd") != (host is not None):
            raise ValueError("the agentd mode needs an AgentdHost, the others none")
        self.host = host
        self.mode, self.specs, self.budget = mode, specs, budget
        self.exe, self.alias = exe, alias
        self.fs = CgroupFS(cgroup_root())
        self.parent = f"agentd-replay-{os.getpid()}-{next(_seq)}"
        self.run_dir = os.path.join(work_dir, self.parent)
        self.barrier_dir = os.path.join(self.run_dir, "barrier")
        self.log = log or (lambda msg: None)
        self.procs = {}
        self.peaks = {}
        self.group_peak = None      # the most memory the whole group held at once
        self.zram_peak = None       # the most the zram swap held (compressed, outside the budget)
        self._group_peak_file = None
        self.timed_out = set()
        self.cpu = CpuMeter()

    # --- setup ---------------------------------------------------------------------
    def _setup(self):
        zram_reset()
        os.makedirs(self.barrier_dir, exist_ok=True)
        os.makedirs(self.barrier_dir + "-hold", exist_ok=True)
        if self.host is not None:
            self.host.set_budget(self.budget)
            self.events_from = len(self.host.events())
            self._watch_group_peak(self.host.parent)
            return
        self.fs.enable_controllers("", CONTROLLERS)
        self.fs.mkdir(self.parent, exist_ok=False)
        self.fs.enable_controllers(self.parent, CONTROLLERS)
        self.fs.write(self.parent, "memory.max", str(self.budget) if self.budget else "max")
        for s in self.specs:
            cg = f"{self.parent}/{s.name}"
            self.fs.mkdir(cg)
            self.fs.write(cg, "memory.oom.group", "1")
            # No swap for the agents' containers (Kubernetes' default, swapBehavior NoSwap):
            # with it the kernel would swap tool calls' pages at the budget, not OOM-kill.
            self.fs.write_if_offered(cg, "memory.swap.max", "0")
            if self.mode == "static" and self.budget:
                self.fs.write(cg, "memory.max", str(self.budget // len(self.specs)))
        self._watch_group_peak(self.parent)

    def _watch_group_peak(self, cg):
        """Watch this run's combined peak in `cg`: how close the agents came to the budget
        together. The agentd daemon's cgroup serves many runs, so its peak counts only
        where the kernel resets it for our descriptor; a fresh cgroup's counts either way."""
        try:
            peak = self.fs.peak_from_now(cg)
        except KernelError:
            return                      # no memory controller: no figure
        if not peak.reset and self.host is not None:
            peak.close()                # an old kernel: the peak would span earlier runs
            return
        self._group_peak_file = peak

    # --- agents --------------------------------------------------------------------
    def _spawn(self, s, t0):
        d = os.path.join(self.run_dir, s.name)
        prefix = [*agentd_front(), "tool", "--"] if self.mode == "agentd" else []
        sched = write_schedule(s, self.run_dir, self.alias, prefix, self.barrier_dir)
        result = os.path.join(d, "result")
        env = dict(os.environ, PYTHONPATH=REPO)
        if s.measure_latency:
            env["AGENTD_REPLAY_LATENCY"] = os.path.join(d, "latency")
        argv = [self.exe, "agent", sched, result]
        if self.mode == "agentd":
            env["AGENTD_SOCKET"] = self.host.socket
            argv = [*agentd_front(), "run", "--user", "root", "--name", self.agent_name(s), "--class", s.priority, "--",
                    *argv]
            self.procs[s.name] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, cwd=d,
                                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr"), "w"))
            return
        procs_file = self.fs.path(f"{self.parent}/{s.name}", PROCS)

        def enter():
            fd = os.open(procs_file, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
        self.procs[s.name] = subprocess.Popen(argv, env=env, preexec_fn=enter, stdin=subprocess.DEVNULL, cwd=d,
                                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr"), "w"))

    def agent_name(self, s):
        """The agent's name for agentd: unique across the runs one daemon serves."""
        return f"{self.parent.rsplit('-', 1)[-1]}-{s.name}" if self.host else s.name

    def run(self, timeout):
        """Run every agent to its end (or `timeout` s); returns [AgentResult]."""
        try:
            self._setup()
            t0 = time.monotonic()
            for s in sorted(self.specs, key=lambda s: s.delay):
                time.sleep(max(0.0, t0 + s.delay - time.monotonic()))
                self._spawn(s, t0)
            deadline = t0 + timeout
            running = dict(self.procs)
            self.cpu.start()
            while running:
                self.cpu.tick()
                for name, p in list(running.items()):
                    if p.poll() is not None:
                        # An agent that ended (or died) before the barrier must not hold the others.
                        for b in (self.barrier_dir, self.barrier_dir + "-hold"):
                            open(os.path.join(b, name), "a").close()
                        del running[name]
                if running and time.monotonic() > deadline:
                    for name, p in running.items():
                        self.log(f"agent {name} still running after {timeout:.0f} s: stopping it")
                        self.timed_out.add(name)
                        p.kill()
                        p.wait()
                    break
                time.sleep(0.2)
            self.cpu.tick(final=True)
            self.zram_peak = zram_used_max()
            self._read_peaks()
            return self._results()
        finally:
            self._cleanup()

    def _results(self):
        events = self.host.events()[self.events_from:] if self.host else []
        out = []
        for s in self.specs:
            d = os.path.join(self.run_dir, s.name)
            start, done, calls, waited = parse_result(os.path.join(d, "result"))
            status = self.procs[s.name].returncode if s.name in self.procs else None
            mine = [e for e in events if e.get("agent") == self.agent_name(s) and e.get("event") == "action"]
            actions = {a: len({e.get("tool") or i for i, e in enumerate(mine) if e.get("action") == a})
                       for a in ACTIONS}
            frozen_s, queued_s, calls_s = time_lost(events, self.agent_name(s))
            killed = sum(1 for c in calls if call_killed(c[3], self.mode == "agentd"))
            failed = sum(1 for c in calls if c[3] != 0) - killed
            lost_reason = None
            if done is None:
                if s.name in self.timed_out:
                    lost_reason = "timed out (stopped by the harness)"
                elif any(e.get("action") == "kill_main" for e in mine):
                    lost_reason = "agent killed by agentd (kill_main)"
                elif status is not None and status in (-signal.SIGKILL, 128 + signal.SIGKILL):
                    lost_reason = "agent process SIGKILLed (OOM kill of the agent)"
                elif start is None:
                    lost_reason = f"agent did not start (exit {status})"
                else:
                    lost_reason = f"agent ended early (exit {status})"
            pk = s.schedule.peak_call
            peak_start = calls[pk][1] - start - waited if start is not None and pk is not None and pk < len(calls) else None
            out.append(AgentResult(
                name=s.name, trace=s.trace, priority=s.priority, completed=done is not None,
                seconds=(done - start - waited) if done is not None and start is not None else None,
                sync_wait=waited if s.barrier else None,
                lost_reason=lost_reason, calls=len(calls), calls_planned=len(s.schedule.calls),
                calls_killed=killed, calls_failed=failed, actions=actions, peak_call_start=peak_start,
                peak_bytes=self.peaks.get(s.name), exit_status=status,
                frozen_s=frozen_s, queued_s=queued_s, calls_s=calls_s,
                latencies_us=read_latencies(os.path.join(d, "latency")) if s.measure_latency else []))
        return out

    def _find(self, cg, name, depth=3):
        """The cgroup called `name` below `cg` (agentd places agents a few levels down)."""
        for child in self.fs.children(cg):
            path = f"{cg}/{child}"
            if child == name:
                return path
            if depth > 1:
                found = self._find(path, name, depth - 1)
                if found:
                    return found
        return None

    def _read_peaks(self):
        """memory.peak of every agent's cgroup (its own processes and tool calls), and of
        the group as a whole."""
        if self._group_peak_file is not None:
            try:
                self.group_peak = self._group_peak_file.read()
            except (OSError, ValueError):
                pass
        for s in self.specs:
            try:
                cg = self._find(self.host.parent, self.agent_name(s), 4) if self.host \
                    else self._find(self.parent, s.name)
                if cg:
                    self.peaks[s.name] = self.fs.read_int(cg, "memory.peak")
            except Exception:           # a missing peak only loses a figure, not the run
                pass

    def _cleanup(self):
        if self._group_peak_file is not None:
            self._group_peak_file.close()
            self._group_peak_file = None
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.host is not None:
            # A stopped `agentd run` client leaves its agent running: end it here.
            for s in self.specs:
                try:
                    cg = self._find(self.host.parent, self.agent_name(s), 4)
                    if cg:
                        self.fs.freeze(cg, False)
                        self.fs.kill(cg)
                except Exception:        # already gone
                    pass
        elif self.fs.exists(self.parent):
            self.fs.freeze(self.parent, False)
            self.fs.destroy(self.parent, 30)
