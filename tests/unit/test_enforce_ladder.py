"""The pressure ladder's decisions on literals: who is acted on first, step order, the
interval between steps, relief order, and the agent's main cgroup."""

from agentd.enforce.ladder import FREEZE, KILL, THROTTLE, Candidate, Ladder, offload_bytes

ALL = frozenset({THROTTLE, FREEZE, KILL})


def run_until_quiet(ladder, cands, start, step, n, pressure=True):
    """Tick `n` times `step` apart, applying each decision to the candidates."""
    out = []
    by_key = {c.key: c for c in cands}
    t = start
    for _ in range(n):
        if pressure:
            ladder.pressure(t)
        d = ladder.decide(t, list(by_key.values()))
        if d:
            out.append((d.action, d.key))
            c = by_key[d.key]
            if d.action in (THROTTLE, FREEZE, KILL):
                c.applied = c.applied + (d.action,)
            elif d.action == "thaw":
                c.applied = tuple(a for a in c.applied if a != FREEZE)
            elif d.action == "restore":
                c.applied = tuple(a for a in c.applied if a != THROTTLE)
            elif d.action == "resume":
                c.applied = tuple(a for a in c.applied if a not in (THROTTLE, FREEZE))
        t += step
    return out, t


def test_lowest_priority_call_climbs_the_whole_ladder_before_the_next():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=3.0, window_s=2.0)
    cands = [Candidate("a/0001-interactive", 80), Candidate("a/0002-batch", 20), Candidate("b/0001-normal", 50)]
    acts, _ = run_until_quiet(lad, cands, 0.0, 1.0, 7)
    assert acts == [
        (THROTTLE, "a/0002-batch"), (FREEZE, "a/0002-batch"), (KILL, "a/0002-batch"),
        (THROTTLE, "b/0001-normal"), (FREEZE, "b/0001-normal"), (KILL, "b/0001-normal"),
        (THROTTLE, "a/0001-interactive"),
    ]


def test_one_step_per_interval_and_the_first_at_once():
    lad = Ladder(step_interval_s=2.0, relief_interval_s=5.0, window_s=2.0)
    cands = [Candidate("a/t1", 20)]
    lad.pressure(10.0)
    assert lad.decide(10.0, cands).action == THROTTLE       # reaction: at the event itself
    cands[0].applied = (THROTTLE,)
    lad.pressure(11.0)
    assert lad.decide(11.0, cands) is None                  # within step_interval_s
    assert lad.decide(12.0, cands).action == FREEZE


def test_ties_go_to_the_lower_priority_agent_then_the_bigger_call():
    lad = Ladder(step_interval_s=1.0)
    cands = [Candidate("hi/t", 50, agent_priority=90, memory=900),
             Candidate("lo/small", 50, agent_priority=10, memory=100),
             Candidate("lo/big", 50, agent_priority=10, memory=500)]
    lad.pressure(0.0)
    assert lad.decide(0.0, cands).key == "lo/big"


def test_steps_the_kernel_lacks_are_skipped():
    # No memory controller (the development host): throttling is impossible, freeze first.
    lad = Ladder(step_interval_s=1.0)
    c = Candidate("a/t", 20, can=frozenset({FREEZE, KILL}))
    acts, _ = run_until_quiet(lad, [c], 0.0, 1.0, 3)
    assert acts == [(FREEZE, "a/t"), (KILL, "a/t")]


def test_policy_step_subset_and_order():
    lad = Ladder(steps=(FREEZE,), step_interval_s=1.0)
    low, high = Candidate("a/low", 10), Candidate("a/high", 90)
    acts, t = run_until_quiet(lad, [low, high], 0.0, 1.0, 2)
    # The frozen call keeps its memory (no swap): freezing the other would free nothing.
    assert acts == [(FREEZE, "a/low")]
    low.offloaded = True          # its memory went out to swap: pausing frees room again
    acts, _ = run_until_quiet(lad, [low, high], t, 1.0, 2)
    assert acts == [(FREEZE, "a/high")]


def test_a_growing_call_passing_the_paused_one_is_not_paused_beside_it():
    # Two equal calls: the older holds 103 MiB, the newer is forecast at the floor and grows
    # into it. The newer is the one paused, and it stays first in line as it passes the
    # older's size: the older is never frozen, the ladder's next step is the newer's kill.
    lad = Ladder(step_interval_s=1.0, urgent_interval_s=0.25)
    older = Candidate("ignite/pytest", 20, agent_priority=100, memory=103, started=1.0)
    newer = Candidate("dask/pytest", 20, agent_priority=100, memory=40, started=2.0)
    acts, t = [], 10.0
    for grown in (60, 150, 272, 272):
        newer.memory = grown
        lad.pressure(t, "memory watch", hold_s=0.5, urgent=True)
        d = lad.decide(t, [older, newer])
        acts.append((d.action, d.key))
        c = {older.key: older, newer.key: newer}[d.key]
        c.applied = c.applied + (d.action,)
        t += 0.3
    assert acts == [(THROTTLE, "dask/pytest"), (FREEZE, "dask/pytest"), (KILL, "dask/pytest")] + [acts[3]]
    assert FREEZE not in older.applied


def test_no_call_is_frozen_beside_a_paused_call_that_keeps_its_memory():
    lad = Ladder(steps=(THROTTLE, FREEZE), step_interval_s=1.0)
    paused = Candidate("a/pytest", 20, applied=(THROTTLE, FREEZE), started=1.0)
    other = Candidate("b/pytest", 20, started=2.0)
    acts, t = run_until_quiet(lad, [paused, other], 0.0, 1.0, 3)
    assert acts == [(THROTTLE, "b/pytest")]       # throttled, never frozen beside it
    paused.offloaded = True
    acts, _ = run_until_quiet(lad, [paused, other], t, 1.0, 2)
    assert acts == [(FREEZE, "b/pytest")]


def test_a_paused_call_is_offloaded_as_far_as_free_swap_takes_it():
    assert offload_bytes(30 << 20, 1 << 30, 64 << 20) == 30 << 20
    assert offload_bytes(300 << 20, 1 << 30, 64 << 20) == 64 << 20       # a step at a time
    assert offload_bytes(300 << 20, 10 << 20, 64 << 20) == 10 << 20
    assert offload_bytes(300 << 20, 0, 64 << 20) == 0
    assert offload_bytes(None, 1 << 30, 64 << 20) == 0


def test_main_cgroup_never_touched_unless_offered_and_only_after_every_tool():
    lad = Ladder(step_interval_s=1.0)
    # Without kill_main_allowed the enforcer offers no main candidate: nothing past the tools.
    acts, _ = run_until_quiet(lad, [Candidate("a/t", 20, can=frozenset({KILL}))], 0.0, 1.0, 4)
    assert acts == [(KILL, "a/t")]
    # Offered (kill_main_allowed): killed only after the tool calls are at the top, and only killed.
    lad = Ladder(step_interval_s=1.0)
    cands = [Candidate("a/main", 5, main=True, can=frozenset({KILL})), Candidate("a/t", 90, can=frozenset({KILL}))]
    acts, _ = run_until_quiet(lad, cands, 0.0, 1.0, 4)
    assert acts == [(KILL, "a/t"), (KILL, "a/main")]
    # A main candidate is never throttled or frozen even if offered more.
    lad = Ladder(step_interval_s=1.0)
    acts, _ = run_until_quiet(lad, [Candidate("a/main", 5, main=True)], 0.0, 1.0, 3)
    assert acts == [(KILL, "a/main")]


def test_relief_highest_priority_first_one_step_per_interval_after_calm():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=3.0, window_s=1.0)
    cands = [Candidate("a/low", 10, applied=(THROTTLE, FREEZE)), Candidate("a/high", 90, applied=(THROTTLE,)),
             Candidate("a/mid", 50, applied=(FREEZE,))]
    lad.pressure(0.0)
    # Pressure gone at 1.5 s, but not calm for relief_interval_s yet: nothing undone.
    assert lad.decide(2.9, cands) is None
    acts, _ = run_until_quiet(lad, cands, 3.0, 3.0, 6, pressure=False)
    assert acts == [("restore", "a/high"), ("thaw", "a/mid"), ("thaw", "a/low"), ("restore", "a/low")]


def test_relief_waits_for_the_interval_between_steps():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=3.0, window_s=1.0)
    cands = [Candidate("a/x", 10, applied=(FREEZE,)), Candidate("a/y", 20, applied=(FREEZE,))]
    lad.pressure(0.0)
    assert lad.decide(3.0, cands).key == "a/y"
    cands[1].applied = ()
    assert lad.decide(4.0, cands) is None
    assert lad.decide(6.0, cands).key == "a/x"


def test_killed_calls_are_never_relieved_and_pressure_resets_calm():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=3.0, window_s=1.0)
    cands = [Candidate("a/x", 10, applied=(THROTTLE, FREEZE, KILL))]
    assert lad.decide(100.0, cands) is None
    c = Candidate("a/y", 10, applied=(FREEZE,))
    lad.pressure(100.0)
    assert lad.decide(102.0, [c]) is None          # calm for 2 s only
    lad.pressure(102.5)
    assert lad.decide(105.0, [c]) is None          # pressure came back: calm restarts
    assert lad.decide(105.5, [c]).action == "thaw"


def test_the_agent_priority_outranks_the_call_class():
    # A high agent's batch test suite is worth more than a low agent's interactive command.
    lad = Ladder(step_interval_s=1.0)
    cands = [Candidate("hi/pytest", 20, agent_priority=800, memory=900),
             Candidate("lo/cat", 80, agent_priority=100, memory=10)]
    lad.pressure(0.0)
    assert lad.decide(0.0, cands).key == "lo/cat"


def test_urgent_pressure_steps_at_the_watch_interval_and_only_while_it_lasts():
    # PSI pressure: one step per step_interval_s. Memory-watch (urgent) pressure: one step
    # per urgent_interval_s, held only as long as the watch keeps reporting.
    lad = Ladder(step_interval_s=1.0, window_s=2.0, urgent_interval_s=0.25)
    c = Candidate("a/t", 20)
    acts = []
    for t in (0.0, 0.25, 0.5):
        lad.pressure(t, "growth", hold_s=0.5, urgent=True)
        d = lad.decide(t, [c])
        acts.append(d.action)
        c.applied = c.applied + (d.action,)
    assert acts == [THROTTLE, FREEZE, KILL]
    # The growth stopped: 0.5 s after the last report the pressure is gone.
    lad2 = Ladder(step_interval_s=1.0, window_s=2.0, urgent_interval_s=0.25)
    c2 = Candidate("a/t", 20)
    lad2.pressure(0.0, "growth", hold_s=0.5, urgent=True)
    assert lad2.decide(0.0, [c2]).action == THROTTLE
    c2.applied = (THROTTLE,)
    assert lad2.under_pressure(0.5) and not lad2.under_pressure(0.6)
    assert lad2.decide(0.6, [c2]) is None
    # A PSI event meanwhile paces at step_interval_s again.
    lad2.pressure(0.7)
    assert lad2.decide(0.7, [c2]) is None          # 0.7 s after the last step < 1 s
    assert lad2.decide(1.0, [c2]).action == FREEZE


def test_a_paused_call_that_fits_resumes_after_the_quick_interval():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    c = Candidate("lo/pytest", 20, applied=(FREEZE,), fits=True)
    lad.pressure(0.0)                              # pressure until 1.5 s (1.5 windows)
    assert lad.decide(1.9, [c]) is None            # calm for less than quick_relief_s
    d = lad.decide(2.0, [c])
    assert d.action == "thaw" and "fits" in d.reason
    # The next step waits the quick interval again, not the whole relief interval.
    c2 = Candidate("lo/pytest", 20, applied=(THROTTLE,), fits=True)
    assert lad.decide(3.9, [c2]) is None
    assert lad.decide(4.0, [c2]).action == "restore"


def test_a_paused_call_that_does_not_fit_waits_the_whole_relief_interval():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    c = Candidate("lo/pytest", 20, applied=(FREEZE,), fits=False)
    lad.pressure(0.0)
    assert lad.decide(2.0, [c]) is None
    assert lad.decide(9.9, [c]) is None
    d = lad.decide(10.0, [c])
    assert d.action == "thaw" and "fits" not in d.reason


def test_a_fitting_low_call_does_not_jump_a_high_call_that_does_not_fit():
    # Relief keeps its priority order: the high call next in line does not fit, so nothing
    # is undone early, even though the low call behind it would fit.
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    hi = Candidate("hi/build", 20, agent_priority=800, applied=(FREEZE,), fits=False)
    lo = Candidate("lo/test", 20, agent_priority=100, applied=(FREEZE,), fits=True)
    lad.pressure(0.0)
    assert lad.decide(5.0, [hi, lo]) is None
    assert lad.decide(10.0, [hi, lo]).key == "hi/build"


def test_of_two_equal_calls_paused_together_the_one_that_fits_goes_first():
    # One collision paused two low agents' test suites: the older still expects growth
    # that does not fit beside the younger, which is at its peak and fits. The younger
    # goes on after the quick interval (it finishes and frees the room the older needs);
    # waiting for the older would keep both paused for the whole relief interval.
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    older = Candidate("a/pytest", 20, agent_priority=100, applied=(THROTTLE, FREEZE), fits=False, started=1.0)
    younger = Candidate("b/pytest", 20, agent_priority=100, applied=(THROTTLE, FREEZE), fits=True, started=2.0)
    lad.pressure(0.0)
    assert lad.decide(1.9, [older, younger]) is None
    d = lad.decide(2.0, [older, younger])
    assert (d.action, d.key) == ("resume", "b/pytest") and "fits" in d.reason
    # Once the whole interval has passed, the order is the relief order again.
    lad2 = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    lad2.pressure(0.0)
    assert lad2.decide(10.0, [older, younger]).key == "a/pytest"


def test_each_step_needs_an_event_newer_than_the_last_step():
    # One PSI event holds for 1.5 windows (3 s) but is answered by one step: the throttle
    # may have ended the stall; the next step waits for the next event.
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, window_s=2.0)
    c = Candidate("lo/test", 20)
    lad.pressure(0.0)
    assert lad.decide(0.0, [c]).action == THROTTLE
    c.applied = (THROTTLE,)
    assert lad.decide(1.0, [c]) is None and lad.decide(2.5, [c]) is None
    lad.pressure(2.6)                              # the stall went on: the trigger fires again
    assert lad.decide(2.6, [c]).action == FREEZE


def test_a_throttled_and_frozen_call_that_fits_gets_its_limit_back_and_is_thawed_in_one_step():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    c = Candidate("lo/test", 20, applied=(THROTTLE, FREEZE), fits=True)
    lad.pressure(0.0)
    assert lad.decide(1.9, [c]) is None
    assert lad.decide(2.0, [c]).action == "resume"
    # One that does not fit is thawed first, the limit kept (after the whole interval).
    lad2 = Ladder(step_interval_s=1.0, relief_interval_s=10.0, quick_relief_s=2.0, window_s=1.0)
    c2 = Candidate("lo/test", 20, applied=(THROTTLE, FREEZE), fits=False)
    lad2.pressure(0.0)
    assert lad2.decide(10.0, [c2]).action == "thaw"


def test_a_call_that_relapses_after_relief_resumes_where_it_stood():
    lad = Ladder(step_interval_s=1.0, relief_interval_s=2.0, window_s=1.0)
    c = Candidate("lo/test", 20, relapse=(THROTTLE, FREEZE))
    lad.pressure(0.0)
    assert lad.decide(0.0, [c]).action == KILL
    # Without a relapse the ladder starts at the bottom.
    lad2 = Ladder(step_interval_s=1.0, relief_interval_s=2.0, window_s=1.0)
    lad2.pressure(0.0)
    assert lad2.decide(0.0, [Candidate("lo/test", 20)]).action == THROTTLE


def test_a_relapse_counts_for_a_stall_not_for_the_memory_watch():
    """The memory watch names the shared memory running out, maybe by another agent's
    growth: a call thawed because it fitted starts at the bottom of the ladder again."""
    lad = Ladder(step_interval_s=1.0, relief_interval_s=2.0, window_s=1.0, urgent_interval_s=0.25)
    c = Candidate("lo/test", 20, relapse=(THROTTLE, FREEZE))
    lad.pressure(0.0, urgent=True, hold_s=0.5)
    assert lad.decide(0.0, [c]).action == THROTTLE


def test_a_paused_call_whose_memory_is_in_swap_is_not_killed_for_anothers_growth():
    # The newer call is paused and its memory went to swap; the older one goes on growing.
    # Killing the paused call would free nothing more: the ladder steps on the grower.
    lad = Ladder(step_interval_s=1.0, urgent_interval_s=0.25)
    older = Candidate("ignite/pytest", 20, agent_priority=100, memory=200, started=1.0)
    newer = Candidate("dask/pytest", 20, agent_priority=100, memory=0, started=2.0, applied=(FREEZE,),
                      offloaded=True)
    lad.pressure(10.0, "memory watch", hold_s=0.5, urgent=True)
    d = lad.decide(10.0, [older, newer])
    assert (d.action, d.key) == (THROTTLE, "ignite/pytest")
