"""Admission control on literals: the budget counts what running calls hold and the part of
their forecasts still to come, waiters start by priority, a lone call never waits, and calls
at the forecaster's floor start where real free memory covers them."""

from agentd.enforce.admission import Running, Waiter, demand, fits, fits_resumed, pick

MiB = 1 << 20


def test_running_calls_reserve_their_forecast_or_what_they_hold():
    running = [Running("a/1", 300 * MiB, 100 * MiB), Running("a/2", 100 * MiB, 250 * MiB)]
    assert demand(running) == 550 * MiB


def test_fits_against_budget():
    running = [Running("a/1", 600 * MiB, 100 * MiB)]
    assert fits(400 * MiB, running, 1000 * MiB)
    assert not fits(401 * MiB, running, 1000 * MiB)
    assert fits(10_000 * MiB, running, None)            # no budget


def test_a_lone_call_never_waits():
    assert fits(5000 * MiB, [], 1000 * MiB)


def test_host_available_memory_bounds_future_growth():
    # 500 MiB of forecast growth still to come on a host with 600 MiB available.
    running = [Running("a/1", 600 * MiB, 100 * MiB)]
    assert fits(100 * MiB, running, None, available=600 * MiB)
    assert not fits(101 * MiB, running, None, available=600 * MiB)


def test_waiters_are_admitted_by_priority_then_arrival():
    low = Waiter(priority=20, peak=100 * MiB, key="low")
    high = Waiter(priority=80, peak=100 * MiB, key="high")
    high2 = Waiter(priority=80, peak=100 * MiB, key="high2")
    running = [Running("r", 700 * MiB, 700 * MiB)]
    got = [w.key for w in pick([low, high, high2], running, 1000 * MiB)]
    assert got == ["high", "high2", "low"]
    got = [w.key for w in pick([low, high, high2], running, 900 * MiB)]
    assert got == ["high", "high2"]                     # admitted calls count for the next


def test_a_big_high_priority_waiter_is_not_overtaken():
    big = Waiter(priority=90, peak=500 * MiB, key="big")
    small = Waiter(priority=10, peak=10 * MiB, key="small")
    running = [Running("r", 600 * MiB, 600 * MiB)]
    assert pick([small, big], running, 1000 * MiB) == []
    assert [w.key for w in pick([small, big], [], 1000 * MiB)] == ["big", "small"]


def test_the_agent_priority_comes_before_the_call_class():
    low_agent = Waiter(priority=80, peak=100 * MiB, key="low/cat", agent_priority=100)
    high_agent = Waiter(priority=20, peak=100 * MiB, key="high/pytest", agent_priority=800)
    running = [Running("r", 800 * MiB, 800 * MiB)]
    assert [w.key for w in pick([low_agent, high_agent], running, 900 * MiB)] == ["high/pytest"]


def test_a_call_never_waits_for_lower_ranked_calls():
    # 800 MiB reserved by a low agent's calls: a high agent's call is admitted anyway, and
    # what the low calls hold counts as room (the ladder and the OOM order take it back).
    low = Running("lo/pytest", 800 * MiB, 600 * MiB, rank=(100, 20))
    assert not fits(400 * MiB, [low], 1000 * MiB, available=300 * MiB, rank=(100, 80))   # same agent priority
    assert fits(400 * MiB, [low], 1000 * MiB, available=300 * MiB, rank=(800, 20))
    # equal or higher ranks still count
    high = Running("hi/pytest", 800 * MiB, 600 * MiB, rank=(800, 20))
    assert not fits(400 * MiB, [high], 1000 * MiB, rank=(800, 20))


def test_waiters_skip_lower_ranked_reservations():
    low = Running("lo/pytest", 900 * MiB, 900 * MiB, rank=(100, 20))
    hi = Waiter(priority=20, peak=500 * MiB, key="hi/pytest", agent_priority=800)
    lo = Waiter(priority=50, peak=50 * MiB, key="lo/python", agent_priority=100)
    # the low python call yields to nothing lower, and does not fit next to the admitted high call
    assert [w.key for w in pick([lo, hi], [low], 520 * MiB)] == ["hi/pytest"]


def test_a_paused_call_counts_what_it_holds_as_taken_and_its_growth_as_needed():
    # Frozen at 300 MiB of a 500 MiB forecast: it needs 200 MiB more.
    paused = Running("lo/test", 500 * MiB, 300 * MiB, rank=(100, 20))
    other = Running("lo/build", 400 * MiB, 100 * MiB, rank=(100, 20))
    assert fits_resumed(paused, [other], 900 * MiB)               # 400 + 500 <= 900
    assert not fits_resumed(paused, [other], 899 * MiB)
    # Against what the host has left: the other call's growth (300) and its own (200).
    assert fits_resumed(paused, [other], None, available=500 * MiB)
    assert not fits_resumed(paused, [other], None, available=499 * MiB)


def test_a_paused_low_call_waits_while_a_high_agent_spike_runs():
    paused = Running("lo/test", 500 * MiB, 300 * MiB, rank=(100, 20))
    spike = Running("hi/pytest", 1500 * MiB, 1200 * MiB, rank=(800, 20))
    assert not fits_resumed(paused, [spike], None, available=250 * MiB)
    assert fits_resumed(paused, [], None, available=250 * MiB)    # the spike has ended


def test_a_call_that_has_been_at_its_forecast_peak_reserves_only_what_it_holds():
    # A test suite forecast at 300 MiB spiked to 310 MiB and is back at 40 MiB: its spike is
    # behind it, so 260 MiB are free for others. One still growing keeps its forecast.
    past = Running("a/pytest", 300 * MiB, 40 * MiB, seen=310 * MiB)
    growing = Running("b/pytest", 300 * MiB, 40 * MiB, seen=40 * MiB)
    assert (past.to_come, past.reserved) == (0, 40 * MiB)
    assert (growing.to_come, growing.reserved) == (260 * MiB, 300 * MiB)
    # Half way up: only the rest of its forecast is still to come.
    half = Running("c/pytest", 300 * MiB, 100 * MiB, seen=150 * MiB)
    assert (half.to_come, half.reserved) == (150 * MiB, 250 * MiB)


def test_admission_counts_memory_really_free_not_the_sum_of_forecast_peaks():
    # Four calls whose forecast peaks add up to 876 MiB, against a 473 MiB budget; three
    # have been at their peaks and hold 60 MiB each, the fourth holds 50 of 150 MiB.
    # 300 MiB are really free under agentd's limit.
    running = [Running(f"a{i}/x", 242 * MiB, 60 * MiB, seen=242 * MiB) for i in range(3)]
    running.append(Running("a3/x", 150 * MiB, 50 * MiB, seen=50 * MiB))
    assert sum(r.forecast_peak for r in running) == 876 * MiB
    # held 230 + still to come 100 + 143 = 473
    assert fits(143 * MiB, running, 473 * MiB, available=300 * MiB)
    assert not fits(144 * MiB, running, 473 * MiB, available=300 * MiB)
    # what is really free binds when it is less: 100 MiB still to come + the call
    assert fits(120 * MiB, running, 473 * MiB, available=220 * MiB)
    assert not fits(121 * MiB, running, 473 * MiB, available=220 * MiB)


def test_a_paused_call_past_its_peak_needs_no_growth_to_resume():
    paused = Running("lo/test", 500 * MiB, 300 * MiB, rank=(100, 20), seen=520 * MiB)
    spike = Running("lo/pytest", 900 * MiB, 100 * MiB, rank=(100, 20))
    assert fits_resumed(paused, [spike], None, available=800 * MiB)   # 800 to come + 0


FLOOR = 32 * MiB


def test_a_call_at_the_floor_starts_where_real_free_memory_covers_it():
    # A test suite forecast at the whole 368 MiB budget is growing (300 MiB still to come):
    # a `git status` forecast at the floor starts beside it while 40 MiB are really free,
    # and waits only when they are not.
    suite = Running("a/pytest", 368 * MiB, 68 * MiB, rank=(100, 20))
    assert not fits(FLOOR, [suite], 368 * MiB, available=40 * MiB, rank=(100, 80))          # without the floor
    assert fits(FLOOR, [suite], 368 * MiB, available=40 * MiB, rank=(100, 80), floor=FLOOR)
    assert not fits(FLOOR, [suite], 368 * MiB, available=31 * MiB, rank=(100, 80), floor=FLOOR)
    assert fits(FLOOR, [suite], 368 * MiB, available=None, rank=(100, 80), floor=FLOOR)     # nothing known: the budget's sum does not hold it


def test_a_call_above_the_floor_still_waits_for_a_growing_call():
    suite = Running("a/pytest", 368 * MiB, 68 * MiB, rank=(100, 20))
    assert not fits(FLOOR + 1, [suite], 368 * MiB, available=400 * MiB, rank=(100, 80), floor=FLOOR)
    assert not fits(100 * MiB, [suite], None, available=399 * MiB, rank=(100, 80), floor=FLOOR)   # 300 to come


def test_running_calls_at_the_floor_never_hold_a_bigger_call():
    # Three agents' short calls, each forecast at the floor and holding a few MiB: the test
    # suite forecast at the whole budget starts beside them (it waited for every one before).
    shorts = [Running(f"a{i}/git", FLOOR, 5 * MiB, rank=(100, 80)) for i in range(3)]
    assert not fits(368 * MiB, shorts, 368 * MiB, available=200 * MiB, rank=(100, 20))
    assert fits(368 * MiB, shorts, 368 * MiB, available=200 * MiB, rank=(100, 20), floor=FLOOR)
    # One that outgrew the floor counts again, with the growth its forecast still expects.
    grown = Running("a3/python", 100 * MiB, 40 * MiB, seen=40 * MiB, rank=(100, 50))
    assert not fits(368 * MiB, shorts + [grown], 368 * MiB, available=200 * MiB, rank=(100, 20), floor=FLOOR)
    assert fits(140 * MiB, shorts + [grown], None, available=200 * MiB, rank=(100, 20), floor=FLOOR)
    assert not fits(141 * MiB, shorts + [grown], None, available=200 * MiB, rank=(100, 20), floor=FLOOR)


def test_waiters_at_the_floor_take_their_peak_out_of_what_is_free():
    suite = Running("a/pytest", 368 * MiB, 68 * MiB, rank=(100, 20))
    ws = [Waiter(priority=80, peak=FLOOR, key=f"w{i}", agent_priority=100) for i in range(3)]
    assert pick(ws, [suite], 368 * MiB, available=70 * MiB) == []
    assert [w.key for w in pick(ws, [suite], 368 * MiB, available=70 * MiB, floor=FLOOR)] == ["w0", "w1"]


def test_a_paused_call_resumes_beside_calls_at_the_floor():
    paused = Running("lo/test", 300 * MiB, 200 * MiB, rank=(100, 20))
    shorts = [Running(f"a{i}/git", FLOOR, 10 * MiB, rank=(100, 80)) for i in range(2)]
    assert not fits_resumed(paused, shorts, None, available=100 * MiB)        # 2 x 22 to come + 100
    assert fits_resumed(paused, shorts, None, available=100 * MiB, floor=FLOOR)
