"""Lifecycle program on the host kernel: load, attach, scoped events, stop-at-exec, clean detach."""

import os
import signal
import subprocess
import time

import pytest

from agentd.errors import BpfError
from agentd.kernel import bpf_types as T
from agentd.kernel.bpf_lifecycle import Lifecycle
from agentd.kernel.bpf_memwatch import MemWatch
from agentd.kernel.bpf_probe import bpf_status
from agentd.kernel.libbpf import Object
from agentd.monitor.events import ProcKind

from .bpf_support import Collector, spawn_in, wait_released


def test_bpf_status_reports_bpf_mode_here():
    st = bpf_status()
    assert st["mode"] == "bpf", st
    assert st["flavour"] == "tp_btf"


def test_programs_detach_and_leave_no_prog_map_or_link_behind():
    lc, mw = Lifecycle(), MemWatch()
    ids = {}
    for obj in (lc._obj, mw._obj):
        for k, v in obj.kernel_ids().items():
            ids.setdefault(k, []).extend(v)
    assert len(ids["progs"]) == 4 and len(ids["links"]) == 4
    live = wait_released(ids, timeout=0)
    assert live == {k: set(v) for k, v in ids.items()}, "bpftool must see every part while loaded"
    lc.close()
    mw.close()
    assert wait_released(ids) == {}


def test_missing_object_and_bad_program_name_raise_bpf_error(tmp_path):
    with pytest.raises(BpfError, match="make -C bpf"):
        Object(str(tmp_path / "nope.bpf.o"))
    lc = Lifecycle()
    try:
        with pytest.raises(BpfError, match="program no_such_prog"):
            lc._obj._prog("no_such_prog")
    finally:
        lc.close()


def test_garbage_object_error_carries_libbpf_message(tmp_path):
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(BpfError) as err:
        Object(str(bad))
    assert "libbpf:" in str(err.value)


def _events_for(events, pids):
    return [e for e in events if e.pid in pids]


def test_fork_exec_exit_reported_for_watched_tree_only(cgfs, test_root):
    cgfs.makedirs(f"{test_root}/agent/tools/t1")
    cgfs.makedirs(f"{test_root}/other")
    lc = Lifecycle()
    col = Collector(lc)
    try:
        lc.watch(cgfs.cgroup_id(f"{test_root}/agent"), T.AGENTD_WATCH_TREE)
        script = "sleep 0 & wait; exit 3"
        inside = spawn_in(cgfs, f"{test_root}/agent/tools/t1", ["sh", "-c", script, "argv1", "argv2"])
        outside = spawn_in(cgfs, f"{test_root}/other", ["sh", "-c", script])
        assert inside.wait(10) == 3 and outside.wait(10) == 3
        events = col.drain(until=lambda evs: any(e.kind == ProcKind.EXIT and e.pid == inside.pid for e in evs))
        mine = _events_for(events, {inside.pid})
        kinds = [e.kind for e in mine]
        assert ProcKind.EXEC in kinds and ProcKind.EXIT in kinds
        ex = next(e for e in mine if e.kind == ProcKind.EXEC)
        assert ex.argv == ("sh", "-c", script, "argv1", "argv2")
        assert ex.filename.endswith("sh")
        assert ex.cgroup_id == cgfs.cgroup_id(f"{test_root}/agent/tools/t1")
        assert ex.watched_id == cgfs.cgroup_id(f"{test_root}/agent")
        exit_ev = next(e for e in mine if e.kind == ProcKind.EXIT)
        assert exit_ev.exit_code == 3 and exit_ev.signal is None
        forks = [e for e in events if e.kind == ProcKind.FORK and e.ppid == inside.pid]
        assert len(forks) == 1, "the shell forked exactly one process (sleep)"
        assert any(e.kind == ProcKind.EXEC and e.pid == forks[0].pid and e.comm == "sleep" for e in events)
        assert not _events_for(events, {outside.pid}), "unwatched cgroup reported"
        assert lc.stats()["lost"] == 0
    finally:
        col.close()
        lc.close()


def test_unwatch_stops_reporting(cgfs, test_root):
    cgfs.makedirs(f"{test_root}/w")
    lc = Lifecycle()
    col = Collector(lc)
    try:
        cid = cgfs.cgroup_id(f"{test_root}/w")
        lc.watch(cid)
        assert lc.watched() == {cid: T.AGENTD_WATCH_TREE}
        assert lc.unwatch(cid) is True
        p = spawn_in(cgfs, f"{test_root}/w", ["true"])
        p.wait(10)
        time.sleep(0.05)
        assert not _events_for(col.drain(timeout=0.2), {p.pid})
    finally:
        col.close()
        lc.close()


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_child_of_main_process_is_stopped_at_exec_until_resumed(cgfs, test_root):
    main = f"{test_root}/main"
    cgfs.makedirs(main)
    lc = Lifecycle()
    col = Collector(lc)
    try:
        lc.watch(cgfs.cgroup_id(main), T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC)
        # The "agent" joins main before its exec: its parent (this test) is outside main,
        # so its own exec is not a candidate; the shell it forks and execs is.
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        evs = col.drain(until=lambda evs: any(e.stopped for e in evs))
        stopped = [e for e in evs if e.stopped]
        assert len(stopped) == 1
        ev = stopped[0]
        assert ev.ppid == agent.pid and ev.in_main and ev.parent_in_main
        assert ev.argv == ("sh", "-c", "exit 7")
        time.sleep(0.05)
        assert _state(ev.pid) == "T", "the child must not run before it is resumed"
        assert not [e for e in evs if e.kind == ProcKind.EXEC and e.pid == agent.pid and e.stopped]
        os.kill(ev.pid, signal.SIGCONT)
        assert agent.wait(10) == 0
        assert lc.stats()["stopped"] == 1
    finally:
        col.close()
        lc.close()


def test_session_only_stops_the_child_that_leads_its_session_and_reports_the_others(cgfs, test_root):
    main = f"{test_root}/main"
    cgfs.makedirs(main)
    lc = Lifecycle()
    col = Collector(lc)
    evs = []
    try:
        lc.watch(cgfs.cgroup_id(main), T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC
                 | T.AGENTD_WATCH_SESSION_ONLY)
        # The plain child runs to its end with nobody resuming it; the one started with
        # setsid (which leads its session at its second exec) is held.
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; setsid -w sh -c 'exit 0'"])
        evs = col.drain(until=lambda evs: any(e.stopped for e in evs))
        plain = [e for e in evs if e.kind == ProcKind.EXEC and e.argv == ("sh", "-c", "exit 7")]
        assert len(plain) == 1 and plain[0].parent_in_main and not plain[0].leads_session
        assert not plain[0].stopped and not plain[0].stop_skipped
        stopped = [e for e in evs if e.stopped]
        assert len(stopped) == 1 and stopped[0].leads_session, stopped
        time.sleep(0.05)
        assert _state(stopped[0].pid) == "T", "a session leader is still held for placement"
        os.kill(stopped[0].pid, signal.SIGCONT)
        assert agent.wait(10) == 0
        assert lc.stats()["stopped"] == 1
    finally:
        _resume_leftovers(evs)
        col.close()
        lc.close()


def test_classic_tracepoint_flavour_delivers_the_same_events(cgfs, test_root):
    mounted = False
    if not os.path.exists("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
        mounted = True
    cgfs.makedirs(f"{test_root}/w")
    try:
        lc = Lifecycle(flavour="tracepoint")
        col = Collector(lc)
        try:
            assert lc.flavour == "tracepoint"
            lc.watch(cgfs.cgroup_id(f"{test_root}/w"))
            p = spawn_in(cgfs, f"{test_root}/w", ["sh", "-c", "exit 5", "x"])
            assert p.wait(10) == 5
            evs = col.drain(until=lambda evs: any(e.kind == ProcKind.EXIT for e in evs))
            ex = next(e for e in evs if e.kind == ProcKind.EXEC and e.pid == p.pid)
            assert ex.argv == ("sh", "-c", "exit 5", "x") and ex.filename.endswith("sh")
            assert next(e for e in evs if e.kind == ProcKind.EXIT and e.pid == p.pid).exit_code == 5
        finally:
            col.close()
            lc.close()
    finally:
        if mounted:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=True)


# --- dead-man switch: a stalled daemon never leaves a tool call stopped ---------------

def _stop_watched(cgfs, main):
    lc = Lifecycle()
    lc.watch(cgfs.cgroup_id(main), T.AGENTD_WATCH_TREE | T.AGENTD_WATCH_MAIN | T.AGENTD_WATCH_STOP_EXEC)
    return lc


def _resume_leftovers(evs):
    for e in evs:
        if e.stopped:
            try:
                os.kill(e.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def test_stale_heartbeat_lets_the_exec_run_and_flags_it(cgfs, test_root):
    main = f"{test_root}/main"
    cgfs.makedirs(main)
    lc = _stop_watched(cgfs, main)
    col = Collector(lc)
    evs = []
    try:
        lc.beat(0.25)
        time.sleep(0.5)                  # no beat since: the daemon counts as hung
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        try:
            assert agent.wait(10) == 0, "nobody resumes: the child must not have been stopped"
        finally:
            evs = col.drain(until=lambda evs: any(e.kind == ProcKind.EXEC and e.ppid == agent.pid for e in evs))
        child = [e for e in evs if e.kind == ProcKind.EXEC and e.ppid == agent.pid]
        assert len(child) == 1 and child[0].stop_skipped and not child[0].stopped
        st = lc.stats()
        assert st["stop_skipped"] == 1 and st["stopped"] == 0
        assert lc.held() == {}

        # A fresh beat: stops again, and records the task in `held` until it exits.
        lc.beat(60)
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        evs = col.drain(until=lambda evs: any(e.stopped for e in evs))
        ev = next(e for e in evs if e.stopped)
        held = lc.held()
        assert list(held) == [ev.pid]
        with open(f"/proc/{ev.pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        assert held[ev.pid].start_boottime_ns // (10**9 // os.sysconf("SC_CLK_TCK")) == ticks
        os.kill(ev.pid, signal.SIGCONT)
        assert agent.wait(10) == 0
        deadline = time.monotonic() + 10
        while lc.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lc.held() == {}, "the exit of a held task must remove its entry"
    finally:
        _resume_leftovers(evs)
        col.close()
        lc.close()


def test_exec_watchdog_resumes_a_task_nobody_resumed(cgfs, test_root):
    """The daemon stops beating right after a stop (it hung): the watchdog, a separate
    process, resumes the task once it has been held longer than the bound."""
    import threading
    from agentd.kernel import exec_watchdog

    main = f"{test_root}/main"
    cgfs.makedirs(main)
    lc = _stop_watched(cgfs, main)
    col = Collector(lc)
    hung = threading.Event()
    evs = []

    def beat():                          # the daemon's event loop, until it "hangs"
        while not hung.is_set():
            lc.beat(1.0)
            time.sleep(0.1)
    beater = threading.Thread(target=beat)
    beater.start()
    dog = None
    try:
        dog = exec_watchdog.spawn(lc.watchdog_fds())
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        evs = col.drain(until=lambda evs: any(e.stopped for e in evs), timeout=30)
        hung.set()
        assert any(e.stopped for e in evs), "the exec was not stopped"
        assert agent.wait(30) == 0, "the watchdog did not resume the held task"
        assert lc.held() == {}
        assert lc.stats()["released"] == 1
        assert dog.poll() is None
    finally:
        hung.set()
        beater.join()
        if dog is not None:
            dog.terminate()
            dog.wait(10)
        _resume_leftovers(evs)
        col.close()
        lc.close()


def test_exec_watchdog_never_signals_a_reused_pid():
    from agentd.kernel import exec_watchdog

    p = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(p.pid, signal.SIGSTOP)
        ticks = exec_watchdog.start_ticks(p.pid)
        tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
        other = T.agentd_held(stop_ns=0, start_boottime_ns=(ticks + 1) * tick_ns)
        assert exec_watchdog.resume_held(p.pid, other) is False
        time.sleep(0.1)
        assert _state(p.pid) == "T"
        same = T.agentd_held(stop_ns=0, start_boottime_ns=ticks * tick_ns + 1)
        assert exec_watchdog.resume_held(p.pid, same) is True
        deadline = time.monotonic() + 10
        while _state(p.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(p.pid) != "T"
    finally:
        p.kill()
        p.wait()


def test_exec_watchdog_resumes_everything_held_when_the_daemon_exits(cgfs, test_root):
    """A held task younger than the bound is left alone while the daemon lives; when the
    daemon exits (here a stand-in process, killed), the watchdog resumes it and exits."""
    from agentd.kernel import exec_watchdog

    main = f"{test_root}/main"
    cgfs.makedirs(main)
    lc = _stop_watched(cgfs, main)
    col = Collector(lc)
    fake_daemon = subprocess.Popen(["sleep", "300"])
    evs, dog = [], None
    try:
        lc.beat(60)
        dog = exec_watchdog.spawn(lc.watchdog_fds(), daemon_pid=fake_daemon.pid)
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 7'; echo $? > /dev/null"])
        evs = col.drain(until=lambda evs: any(e.stopped for e in evs), timeout=30)
        ev = next(e for e in evs if e.stopped)
        time.sleep(1.0)
        assert _state(ev.pid) == "T" and agent.poll() is None, "held for less than the bound: not resumed"
        fake_daemon.kill()
        fake_daemon.wait()
        assert agent.wait(30) == 0
        assert dog.wait(30) == 0
        assert lc.held() == {} and lc.stats()["released"] == 1
    finally:
        fake_daemon.kill()
        fake_daemon.wait()
        if dog is not None and dog.poll() is None:
            dog.kill()
            dog.wait()
        _resume_leftovers(evs)
        col.close()
        lc.close()
