"""The decisions of monitor/containers.py and monitor/shells.py over fakes: which exec in a
container's cgroup becomes a tool call, what of an ended agent the runtime keeps, which
process is a persistent shell and which children share a call. The real kernel and
runtimes: tests/host/test_persistent_shell.py, tests/kernel/test_containers.py."""

from types import SimpleNamespace

from agentd.errors import ProcessGone
from agentd.kernel import bpf_types as T
from agentd.kernel.procfs import ProcInfo
from agentd.monitor.containers import ContainerExecs
from agentd.monitor.events import ProcEvent, ProcKind
from agentd.monitor.shells import PersistentShells
from agentd.policy.loader import load_policy_text

HOST = 8 << 30


class Procfs:
    def __init__(self, infos=None, nspid=None, exes=None):
        self.infos, self.nspid, self.exes = infos or {}, nspid or {}, exes or {}

    def ns_pid(self, pid):
        if pid not in self.nspid:
            raise ProcessGone(f"{pid}")
        return self.nspid[pid]

    def exe(self, pid):
        return self.exes[pid]

    def info(self, pid):
        if pid not in self.infos:
            raise ProcessGone(f"{pid}")
        return self.infos[pid]

    def cmdline(self, pid):
        return list(self.info(pid).argv)


def info(pid, ppid, pgid, sid, argv):
    return ProcInfo(pid=pid, ppid=ppid, pgid=pgid, sid=sid, state="S", starttime=100 + pid, argv=tuple(argv),
                    rss_bytes=0)


class Lifecycle:
    def __init__(self):
        self.watched, self.released, self.shells = {}, [], {}

    def watch(self, cgid, flags):
        self.watched[cgid] = flags

    def unwatch(self, cgid):
        self.watched.pop(cgid, None)

    def release(self, pid):
        self.released.append(pid)

    def add_shell(self, pid, start):
        self.shells[pid] = start

    def remove_shell(self, pid):
        self.shells.pop(pid, None)


class Fs:
    def __init__(self, procs=None):
        self.made, self.procs_of = [], procs or {}

    def mkdir(self, cg):
        self.made.append(cg)

    def enable_controllers(self, cg):
        pass

    def cgroup_id(self, cg):
        return 7 if cg.endswith("/containers") else 5

    def exists(self, cg):
        return True

    def populated(self, cg):
        return bool(self.procs_of.get(cg))

    def procs(self, cg):
        return self.procs_of.get(cg, [])


def exec_ev(pid, flags, argv=("bash", "-lc", "make")):
    return ProcEvent(kind=ProcKind.EXEC, pid=pid, ppid=1, cgroup_id=99, watched_id=5, ts_ns=0, flags=flags,
                     argv=argv)


def test_an_exec_session_is_placed_and_the_container_init_is_not():
    placed, resumed = [], []
    lc = Lifecycle()
    ce = ContainerExecs(Fs(), Procfs(nspid={40: 1, 41: 12}), lc, lambda a, p, argv: placed.append((a, p, argv)),
                        resume=resumed.append)
    agent = SimpleNamespace(agent_id="a1", cgroup="r/agents/a1")
    ce.on_agent_start(agent, 5)
    assert lc.watched[7] == T.AGENTD_WATCH_CONTAINERS | T.AGENTD_WATCH_STOP_EXEC
    stopped = T.AGENTD_PF_CONTAINER | T.AGENTD_PF_STOPPED
    ce.handle(exec_ev(40, stopped, ("sleep", "2h")))     # pid 1 of its namespace: the init
    ce.handle(exec_ev(41, stopped))
    ce.handle(exec_ev(42, T.AGENTD_PF_MAIN))            # not a container's: the detector's
    ce.handle(exec_ev(45, stopped, ("runc", "init")))   # runc re-executing itself: the runtime's
    assert placed == [("a1", 41, ["bash", "-lc", "make"])]
    assert resumed == [40, 41, 45] and lc.released == [40, 41, 45]
    ce.handle(exec_ev(43, stopped))                     # gone before it was looked at: resumed all the same
    assert resumed[-1] == 43 and len(placed) == 1
    ce.on_agent_end(agent, 5)
    assert 7 not in lc.watched
    ce.handle(exec_ev(44, stopped))                     # no agent any more: only resumed
    assert resumed[-1] == 44 and len(placed) == 1


def test_a_dry_run_watches_container_execs_without_stopping_them():
    lc = Lifecycle()
    ce = ContainerExecs(Fs(), Procfs(), lc, None, observe=True)
    ce.on_agent_start(SimpleNamespace(agent_id="a1", cgroup="r/agents/a1"), 5)
    assert lc.watched[7] == T.AGENTD_WATCH_CONTAINERS


def test_the_runtime_keeps_a_running_container_and_calls_that_stop_one():
    tools = {
        "0001-normal": SimpleNamespace(tool_id="0001-normal", done=False, cgroup="c1", argv=["python3", "x.py"]),
        "0002-normal": SimpleNamespace(tool_id="0002-normal", done=False, cgroup="c2",
                                       argv=["sh", "-c", "(timeout 60 podman stop abc || podman rm -f abc) &"]),
        "0003-normal": SimpleNamespace(tool_id="0003-normal", done=False, cgroup="c3", argv=["sh", "-c", "x"]),
    }
    fs = Fs({"c1": [10], "c2": [11], "c3": [12]})
    procfs = Procfs(exes={10: "/usr/bin/python3", 11: "/bin/dash", 12: "/usr/bin/conmon"})
    ce = ContainerExecs(fs, procfs, None, None)
    agent = SimpleNamespace(agent_id="a1", cgroup="r/agents/a1", tools=tools)
    # No container ever ran for it: a call's argv or program name spares nothing.
    assert ce.at_work(agent) is None
    ce._ran.add("a1")                      # an exec in its container parent was seen
    assert ce.at_work(agent) == ({"0002-normal", "0003-normal"}, False)
    fs.procs_of["r/agents/a1/containers"] = [30]
    assert ce.at_work(SimpleNamespace(agent_id="a1", cgroup="r/agents/a1", tools={})) == (set(), True)
    assert ContainerExecs(Fs(), procfs, None, None).at_work(
        SimpleNamespace(agent_id="a1", cgroup="r/agents/a1", tools={"1": tools["0001-normal"]})) is None


SHELLS = "version: 1\ndetection:\n  tool_parents: [{argv_regex: '^(/usr/bin/env )?(/bin/|/usr/bin/)?bash$'}]\n"


def test_a_persistent_shell_is_recognised_by_its_argv_and_registered_once():
    policy = load_policy_text(SHELLS, "p.yaml", host_memory_bytes=HOST)
    procfs = Procfs({10: info(10, 1, 10, 10, ["bash"]), 11: info(11, 10, 11, 10, ["bash", "-c", "x"])})
    lc = Lifecycle()
    sh = PersistentShells(lambda: policy, procfs, lc)
    assert sh.is_shell_argv(["/usr/bin/env", "bash"]) and sh.is_shell_argv(["bash"])
    assert not sh.is_shell_argv(["bash", "-c", "x"])
    assert sh.is_shell(10) and not sh.is_shell(11) and not sh.is_shell(99)
    sh.kept(10, ["bash"])
    sh.kept(11, ["bash", "-c", "x"])                    # kept in main, but no shell
    assert lc.shells == {10: 110}
    sh.exited(10)
    assert lc.shells == {}


def test_a_pipeline_of_a_job_control_shell_is_one_call_and_without_job_control_each_child_its_own():
    policy = load_policy_text(SHELLS, "p.yaml", host_memory_bytes=HOST)
    procfs = Procfs({
        10: info(10, 1, 10, 10, ["bash"]),              # the shell leads its session (a pty)
        20: info(20, 10, 20, 10, ["grep", "x"]),         # a | b: the job's group is 20
        21: info(21, 10, 20, 10, ["cat"]),
        22: info(22, 21, 20, 10, ["wc"]),                # a subshell's child in the same job
        30: info(30, 10, 30, 10, ["sleep", "1"]),        # the next command
        40: info(40, 10, 10, 10, ["ls"]),                # no job control: the shell's own group
        41: info(41, 10, 10, 10, ["cat"]),
    })
    sh = PersistentShells(lambda: policy, procfs, None)
    call = SimpleNamespace(done=False, agent_id="a")
    assert sh.job(20, "a") is None
    sh.placed(20, call)
    assert sh.job(21, "a") is call and sh.job(22, "a") is call and sh.job(30, "a") is None
    sh.placed(40, SimpleNamespace(done=False, agent_id="a"))
    assert sh.job(41, "a") is None
    call.done = True
    assert sh.job(21, "a") is None
    sh.ended(call)
    assert sh._jobs == {}


def test_a_process_of_another_agent_in_the_same_session_never_joins_a_job():
    """Agents started from one terminal share its session, and setpgid() lets a process
    enter any process group of its session: agent b's process takes the group of agent
    a's running job. It must start a call of b's own, not be moved into a's call (out of
    b's limits, into a's, where a's call pays for it)."""
    policy = load_policy_text(SHELLS, "p.yaml", host_memory_bytes=HOST)
    procfs = Procfs({
        10: info(10, 5, 7, 3, ["bash"]),                # a's shell, no job control, in the terminal's session 3
        20: info(20, 10, 7, 3, ["make"]),               # a's command: group 7 of session 3
        50: info(50, 6, 7, 3, ["bash"]),                # b's shell, same terminal session
        51: info(51, 50, 7, 3, ["stress"]),             # b's child, setpgid'd into a's group
    })
    sh = PersistentShells(lambda: policy, procfs, None)
    call = SimpleNamespace(done=False, agent_id="a")
    sh.placed(20, call)
    assert sh.job(51, "a") is call                    # within a: the same pipeline
    assert sh.job(51, "b") is None                    # from b: a call of its own


def test_no_tool_parents_no_shell():
    policy = load_policy_text("version: 1\n", "p.yaml", host_memory_bytes=HOST)
    sh = PersistentShells(lambda: policy, Procfs({10: info(10, 1, 10, 10, ["bash"])}), Lifecycle())
    assert not sh.enabled() and not sh.is_shell(10) and not sh.is_shell_argv(["bash"])
