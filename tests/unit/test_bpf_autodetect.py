"""AutoDetector decisions from ProcEvents, with fake cgroups, procfs and resume (no kernel)."""

import pytest

from agentd.errors import KernelError, ProcessGone
from agentd.kernel import bpf_types as T
from agentd.kernel.bpf_userspace import ProcInfo
from agentd.monitor.autodetect import AutoDetector
from agentd.monitor.events import ProcEvent, ProcKind

MAIN_ID = 1000


class FakeCgroups:
    def __init__(self):
        self.moves = []
        self.procs_of = {"a/main": []}

    def cgroup_id(self, cg):
        return MAIN_ID

    def move(self, cg, pid):
        self.moves.append((cg, pid))

    def procs(self, cg):
        return list(self.procs_of[cg])


class FakeProcFS:
    def __init__(self, infos=None, kids=None):
        self.infos = infos or {}
        self.kids = kids or {}

    def info(self, pid):
        if pid not in self.infos:
            raise ProcessGone(str(pid))
        return self.infos[pid]

    def descendants(self, pid):
        return list(self.kids.get(pid, []))


class FakeLifecycle:
    def __init__(self):
        self.watched = {}

    def watch(self, cid, flags):
        self.watched[cid] = flags

    def unwatch(self, cid):
        self.watched.pop(cid, None)

    released = None

    def release(self, pid):
        self.released = (self.released or []) + [pid]
        return True


def exec_ev(pid, ppid, argv, flags=T.AGENTD_PF_MAIN | T.AGENTD_PF_PARENT_MAIN | T.AGENTD_PF_STOPPED,
            cgroup_id=MAIN_ID, sid=None):
    return ProcEvent(kind=ProcKind.EXEC, pid=pid, ppid=ppid, cgroup_id=cgroup_id, watched_id=cgroup_id,
                     ts_ns=0, flags=flags, sid=pid if sid is None else sid, argv=tuple(argv))


def make(strategy="stop", is_tool=lambda argv, leads: leads, place_exc=None, procfs=None):
    placed, resumed = [], []

    def place(agent, pid, argv):
        if place_exc:
            raise place_exc
        placed.append((agent, pid, tuple(argv)))
    d = AutoDetector(place, is_tool, FakeCgroups(), strategy=strategy,
                     lifecycle=FakeLifecycle() if strategy != "poll" else None,
                     procfs=procfs or FakeProcFS(), resume=resumed.append)
    d.add_agent("a", "a/main")
    return d, placed, resumed


def test_add_agent_registers_main_with_stop_flags():
    d, _, _ = make()
    assert d.lifecycle.watched[MAIN_ID] == T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC
    d2, _, _ = make("sweep")
    assert d2.lifecycle.watched[MAIN_ID] == T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN
    d.remove_agent("a")
    assert d.lifecycle.watched == {}


def test_session_leading_child_is_placed_then_resumed():
    d, placed, resumed = make()
    d.handle(exec_ev(20, 10, ["/bin/sh", "-c", "ls"]))
    assert placed == [("a", 20, ("/bin/sh", "-c", "ls"))]
    assert resumed == [20]
    assert d.stats.placed == 1 and len(d.stats.hold_ns) == 1
    summary = d.stats.summary()
    assert summary["placed"] == 1 and summary["hold_median_us"] == summary["hold_max_us"] > 0


def test_housekeeping_stays_in_main_but_is_resumed():
    d, placed, resumed = make()
    d.handle(exec_ev(21, 10, ["uname", "-p"], sid=10))
    assert placed == [] and resumed == [21] and d.stats.housekeeping == 1


def test_agent_own_exec_is_not_a_candidate():
    d, placed, resumed = make()
    d.handle(exec_ev(10, 1, ["claude"], flags=T.AGENTD_PF_MAIN))
    assert placed == [] and resumed == [] and d.stats.housekeeping == 0


def test_policy_error_or_failed_place_never_leaves_task_stopped():
    def boom(argv, leads):
        raise RuntimeError("policy bug")
    d, placed, resumed = make(is_tool=boom)
    d.handle(exec_ev(22, 10, ["sh"]))
    assert placed == [] and resumed == [22]
    d, placed, resumed = make(place_exc=KernelError("EBUSY"))
    d.handle(exec_ev(23, 10, ["sh"]))
    assert resumed == [23] and d.stats.errors == 1
    d, placed, resumed = make(place_exc=ProcessGone("gone"))
    d.handle(exec_ev(24, 10, ["sh"]))
    assert resumed == [24] and d.stats.errors == 0


def test_events_outside_main_are_ignored():
    d, placed, resumed = make()
    d.handle(exec_ev(25, 10, ["sh"], cgroup_id=999, flags=0))
    assert placed == [] and resumed == []


def test_sweep_adopts_children_forked_before_the_move(monkeypatch):
    import agentd.monitor.autodetect as ad
    monkeypatch.setattr(ad, "own_cgroup", lambda pid: "/a/tools/t20" if pid == 20 else "/a/main")
    d, placed, _ = make("sweep", procfs=FakeProcFS(kids={20: [30]}))
    d.handle(exec_ev(20, 10, ["sh", "-c", "x"], flags=T.AGENTD_PF_MAIN | T.AGENTD_PF_PARENT_MAIN))
    assert d.cgroups.moves == [("a/tools/t20", 30)]
    # A later fork by the already-moved child, still reported from main: adopted too.
    d.handle(ProcEvent(kind=ProcKind.FORK, pid=31, ppid=30, cgroup_id=MAIN_ID, watched_id=MAIN_ID, ts_ns=0))
    assert d.cgroups.moves[-1] == ("a/tools/t20", 31)
    # Its exec (parent in main from BPF's view) is the same tool call, not a new one.
    d.handle(exec_ev(31, 30, ["grep"], flags=T.AGENTD_PF_MAIN | T.AGENTD_PF_PARENT_MAIN))
    assert len(placed) == 1


def _info(pid, ppid, argv, state="S", sid=None):
    return ProcInfo(pid=pid, ppid=ppid, pgid=pid, sid=pid if sid is None else sid, state=state, starttime=1,
                    argv=tuple(argv), rss_bytes=0)


def test_poll_waits_for_exec_then_places():
    infos = {10: _info(10, 1, ["agent"]), 20: _info(20, 10, ["agent"])}
    d, placed, _ = make("poll", procfs=FakeProcFS(infos))
    d.cgroups.procs_of["a/main"] = [10, 20]
    d.reconcile()
    assert placed == [], "a forked child that has not exec'd yet is not judged"
    infos[20] = _info(20, 10, ["sh", "-c", "make"])
    d.reconcile()
    assert placed == [("a", 20, ("sh", "-c", "make"))]


def test_reconcile_in_stop_mode_rescues_a_stopped_task_whose_event_was_lost():
    infos = {10: _info(10, 1, ["agent"]), 20: _info(20, 10, ["sh", "-c", "x"], state="T")}
    d, placed, resumed = make("stop", procfs=FakeProcFS(infos))
    d.cgroups.procs_of["a/main"] = [10, 20]
    d.reconcile()
    assert placed == [("a", 20, ("sh", "-c", "x"))] and resumed == [20] and d.stats.resumed_late == 1


def test_unknown_strategy_and_missing_lifecycle_are_rejected():
    with pytest.raises(ValueError):
        AutoDetector(None, None, FakeCgroups(), strategy="magic")
    with pytest.raises(ValueError):
        AutoDetector(None, None, FakeCgroups(), strategy="stop")


def test_a_task_rescued_by_reconcile_is_not_placed_again_when_its_event_arrives():
    infos = {10: _info(10, 1, ["agent"]), 20: _info(20, 10, ["sh", "-c", "x"], state="T"),
             21: _info(21, 10, ["uname", "-p"], state="T", sid=10)}
    d, placed, resumed = make("stop", procfs=FakeProcFS(infos))
    d.cgroups.procs_of["a/main"] = [10, 20, 21]
    d.reconcile()
    d.handle(exec_ev(20, 10, ["sh", "-c", "x"]))
    d.handle(exec_ev(21, 10, ["uname", "-p"], sid=10))
    assert placed == [("a", 20, ("sh", "-c", "x"))]
    assert d.stats.housekeeping == 1
    assert sorted(resumed) == [20, 20, 21, 21]     # resuming twice is harmless


def test_only_children_of_the_agents_own_programs_are_tool_calls():
    d, placed, resumed = make()
    asked = []

    def agent_process(ppid):
        asked.append(ppid)
        return ppid == 10          # 10: the agent; 20: a helper it keeps in main
    d.agent_process = agent_process
    d.handle(exec_ev(11, 10, ["bash", "-c", "make"]))
    d.handle(exec_ev(21, 20, ["sh", "-c", "tsc --watch"]))
    assert placed == [("a", 11, ("bash", "-c", "make"))]
    assert resumed == [11, 21] and asked == [10, 20]
    assert d.stats.placed == 1 and d.stats.housekeeping == 1


def test_resumed_task_leaves_the_held_map():
    """After SIGCONT the detector tells the program's `held` map, so the exec watchdog
    never signals that pid again."""
    d, placed, resumed = make()
    d.handle(exec_ev(20, 10, ["sh", "-c", "ls"]))
    assert resumed == [20] and d.lifecycle.released == [20]


def test_call_not_stopped_for_a_stale_heartbeat_is_placed_with_its_descendants(monkeypatch):
    """The program skipped the stop (the daemon was hung): the call ran meanwhile, so
    once placed, whatever it forked is moved after it; nothing is resumed."""
    import agentd.monitor.autodetect as ad
    monkeypatch.setattr(ad, "own_cgroup", lambda pid: "/a/tools/t20" if pid == 20 else "/a/main")
    d, placed, resumed = make(procfs=FakeProcFS(kids={20: [30, 31]}))
    d.handle(exec_ev(20, 10, ["sh", "-c", "make"],
                     flags=T.AGENTD_PF_MAIN | T.AGENTD_PF_PARENT_MAIN | T.AGENTD_PF_STOP_SKIPPED))
    assert placed == [("a", 20, ("sh", "-c", "make"))]
    assert d.cgroups.moves == [("a/tools/t20", 30), ("a/tools/t20", 31)]
    assert resumed == [] and d.lifecycle.released is None
    # A stopped call is not swept: nothing it runs could have forked.
    d.handle(exec_ev(40, 10, ["sh", "-c", "ls"]))
    assert len(d.cgroups.moves) == 2 and resumed == [40]


def test_call_held_past_the_bound_is_swept_too(monkeypatch):
    """The daemon comes back after the exec watchdog resumed a held call: it may have
    forked, so its descendants are moved after it as for a skipped stop."""
    import time
    import agentd.monitor.autodetect as ad
    monkeypatch.setattr(ad, "own_cgroup", lambda pid: "/a/tools/t20" if pid == 20 else "/a/main")
    d, placed, resumed = make(procfs=FakeProcFS(kids={20: [30], 40: [50]}))
    d.lifecycle.max_age_ns = 1_000_000_000
    import dataclasses
    d.handle(dataclasses.replace(exec_ev(20, 10, ["sh", "-c", "make"]), ts_ns=time.monotonic_ns() - 2_000_000_000))
    assert d.cgroups.moves == [("a/tools/t20", 30)] and resumed == [20]
    d.handle(dataclasses.replace(exec_ev(40, 10, ["sh", "-c", "ls"]), ts_ns=time.monotonic_ns()))
    assert len(d.cgroups.moves) == 1 and resumed == [20, 40]


def test_session_only_policy_asks_the_program_to_stop_session_leaders_only():
    # new_session_only without persistent shells: no other exec can be a tool call, so
    # the lifecycle program need not hold it; the flag follows the policy (a reload).
    only = [True]
    d = AutoDetector(lambda *a: None, lambda argv, leads: leads, FakeCgroups(), strategy="stop",
                     lifecycle=FakeLifecycle(), procfs=FakeProcFS(), resume=lambda pid: None,
                     session_only=lambda: only[0])
    d.add_agent("a", "a/main")
    stop = T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC
    assert d.lifecycle.watched[MAIN_ID] == stop | T.AGENTD_WATCH_SESSION_ONLY
    only[0] = False
    d.refresh_flags()
    assert d.lifecycle.watched[MAIN_ID] == stop
    d.lifecycle.watched.clear()
    d.refresh_flags()                                  # unchanged: nothing registered again
    assert d.lifecycle.watched == {}


def test_session_only_never_applies_without_stop_at_exec():
    d = AutoDetector(lambda *a: None, lambda argv, leads: leads, FakeCgroups(), strategy="sweep",
                     lifecycle=FakeLifecycle(), procfs=FakeProcFS(), resume=lambda pid: None,
                     session_only=lambda: True)
    d.add_agent("a", "a/main")
    assert d.lifecycle.watched[MAIN_ID] == T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN
