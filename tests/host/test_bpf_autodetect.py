"""Automatic tool-call detection on the host kernel, with a fake Controller `place`.

Uses the scenario of bench/autodetect.py: an agent in a main cgroup starts tool calls
(sh -c, new session) that fork storms of subshells at once; each subshell records the
cgroup it runs in as its first action.
"""

import asyncio
import importlib.util
import os

import pytest

from agentd.monitor.kernel_events import EventMonitor
from agentd.monitor.events import ProcKind

from .bpf_support import spawn_in

_spec = importlib.util.spec_from_file_location(
    "bench_autodetect", os.path.join(os.path.dirname(__file__), "..", "..", "bench", "autodetect.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.slow
# busybox (static) starts faster than dash: a harder race for placement. It comes with the
# kernel tier's packages; the dash variant always runs.
@pytest.mark.parametrize("shell", ["/bin/sh"] + (["/bin/busybox"] if os.path.exists("/bin/busybox") else []))
def test_stop_at_exec_places_every_process_of_fork_storms(shell):
    r = bench.run("stop", tools=12, storm=20, calls=20, shell=shell)
    assert r["processes"] == 12 * 20
    assert r["fraction"] == 1.0, r
    assert r["tools_placed"] == 12 + 20          # storms + the `sh -c true` calls
    assert r["housekeeping"] == 1                # `uname -p` (no new session) stayed in main
    assert r["errors"] == 0 and r["lost"] == 0
    assert r["hold_median_us"] > 0


@pytest.mark.slow
def test_poll_strategy_places_long_enough_tool_calls_without_bpf():
    r = bench.run("poll", tools=4, storm=5, calls=0, sleep_s=1.0)
    assert r["tools_placed"] == 4
    assert r["errors"] == 0


def test_batched_events_arrive_through_tick(cgfs, test_root):
    cgfs.makedirs(test_root)
    mon = EventMonitor(cgfs)
    try:
        assert mon.lifecycle is not None
        mon.lifecycle.watch(cgfs.cgroup_id(test_root))
        got = []
        mon.proc_listeners.append(got.append)
        p = spawn_in(cgfs, test_root, ["true"])
        p.wait(5)
        mon.tick()
        assert [e.kind for e in got if e.pid == p.pid] == [ProcKind.EXEC, ProcKind.EXIT]
    finally:
        mon.close()


def test_event_monitor_is_driven_by_an_asyncio_loop(cgfs, test_root):
    cgfs.makedirs(test_root)
    mon = EventMonitor(cgfs, batch_bytes=0)
    try:
        assert mon.mode == "bpf", mon.reason
        mon.lifecycle.watch(cgfs.cgroup_id(test_root))
        got = []
        mon.proc_listeners.append(got.append)

        async def main():
            loop = asyncio.get_running_loop()
            loop.add_reader(mon.fileno(), mon.on_readable)
            try:
                p = spawn_in(cgfs, test_root, ["true"])
                for _ in range(200):
                    if any(e.kind == ProcKind.EXIT and e.pid == p.pid for e in got):
                        return p
                    await asyncio.sleep(0.01)
                return p
            finally:
                loop.remove_reader(mon.fileno())
        p = asyncio.run(main())
        p.wait(5)
        assert [e.kind for e in got if e.pid == p.pid] == [ProcKind.EXEC, ProcKind.EXIT]
    finally:
        mon.close()


def placing(cgfs, test_root):
    """An agent's main cgroup, and a place() that moves each tool call into a cgroup of
    its own and records (agent, argv) in `placed`."""
    main = f"{test_root}/main"
    cgfs.makedirs(main)
    placed = []

    def place(agent_id, pid, argv):
        cg = f"{test_root}/tc-{pid}"
        cgfs.mkdir(cg)
        cgfs.move(cg, pid)
        placed.append((agent_id, argv))
    return main, placed, place


def test_for_monitor_wires_stop_strategy_through_the_event_monitor(cgfs, test_root):
    from agentd.monitor.autodetect import for_monitor
    main, placed, place = placing(cgfs, test_root)
    mon = EventMonitor(cgfs)
    try:
        det = for_monitor(mon, place, lambda argv, leads: argv[:2] == ["sh", "-c"], cgfs)
        assert det.mode == "bpf-stop"
        det.add_agent("a1", main)
        agent = spawn_in(cgfs, main, ["sh", "-c", "sh -c 'exit 0'; uname >/dev/null"])
        while agent.poll() is None:
            mon.poll(20)
        assert agent.returncode == 0
        mon.tick()
        assert placed == [("a1", ["sh", "-c", "exit 0"])]
        assert det.stats.housekeeping == 1          # uname: kept in main
    finally:
        mon.close()


def test_session_only_detection_holds_only_session_leaders(cgfs, test_root):
    """new_session_only without persistent shells: only a child that leads its session
    can be a tool call, so only it waits at exec for the daemon; the others run on and are
    still reported (and judged housekeeping)."""
    from agentd.monitor.autodetect import for_monitor
    main, placed, place = placing(cgfs, test_root)
    stopped = []
    mon = EventMonitor(cgfs)
    mon.proc_listeners.append(lambda ev: stopped.append(ev.argv) if ev.stopped else None)
    try:
        det = for_monitor(mon, place, lambda argv, leads: leads, cgfs, session_only=lambda: True)
        det.add_agent("a1", main)
        agent = spawn_in(cgfs, main, ["sh", "-c", "uname >/dev/null; setsid -w sh -c 'exit 0'"])
        while agent.poll() is None:
            mon.poll(20)
        assert agent.returncode == 0
        mon.tick()
        assert placed == [("a1", ["sh", "-c", "exit 0"])]
        assert stopped == [("sh", "-c", "exit 0")]     # uname and setsid itself ran unheld
        assert det.stats.housekeeping >= 2             # ... and were judged all the same
    finally:
        mon.close()
