"""Whose stall is it, on literals: the stall of calls agentd holds at their memory.high is
set against the stall that fired the trigger, over the same interval."""

import pytest

from agentd.enforce.stall import StallLedger, held_delta, own_doing

THRESHOLD_US, WINDOW_S = 100_000, 2.0


def test_a_stall_the_held_calls_explain_is_their_own_doing():
    # 1 s of the scope's stall, 0.98 s of it in the held call: 20 ms left < 50 ms per 1 s.
    assert own_doing((1.0, 1_000_000), [980_000], THRESHOLD_US, WINDOW_S)


def test_a_stall_beyond_the_held_calls_is_pressure():
    # 80 ms unexplained in 1 s: above the trigger's rate (100 ms per 2 s).
    assert not own_doing((1.0, 1_000_000), [920_000], THRESHOLD_US, WINDOW_S)


def test_overlapping_stalls_leave_nothing_unexplained():
    assert own_doing((2.0, 500_000), [400_000, 300_000], THRESHOLD_US, WINDOW_S)


def test_without_a_reading_for_every_held_call_or_any_held_call_it_is_pressure():
    assert not own_doing((1.0, 10_000), [None], THRESHOLD_US, WINDOW_S)
    assert not own_doing((1.0, 10_000), [5_000, None], THRESHOLD_US, WINDOW_S)
    assert not own_doing((1.0, 10_000), [], THRESHOLD_US, WINDOW_S)
    assert not own_doing(None, [5_000], THRESHOLD_US, WINDOW_S)


def test_the_base_is_the_oldest_reading_within_one_window_and_old_enough():
    led = StallLedger(WINDOW_S)
    assert led.base("p", 10.0) is None               # nothing read yet
    for t, total in ((10.0, 0), (10.5, 100), (11.0, 300), (11.5, 600)):
        led.record("p", t, total)
    assert led.base("p", 11.9) == (10.0, 0)
    assert led.base("p", 13.0) == (11.0, 300)        # 10.0 and 10.5 are past the window
    assert led.at("p", 10.5) == 100 and led.at("p", 10.7) is None
    led2 = StallLedger(WINDOW_S)
    led2.record("q", 5.0, 0)
    assert led2.base("q", 5.05) is None              # younger than MIN_AGE_S only


def test_a_held_calls_stall_counts_from_the_base_or_from_its_start():
    assert held_delta(900, 10.0, 300, started=5.0) == 600     # read at the base
    assert held_delta(900, 10.0, None, started=10.2) == 900   # started after it: from 0
    assert held_delta(900, 10.0, None, started=9.0) is None   # older, never read: unknown


def test_ledger_keeps_readings_in_time_order_and_forgets_what_is_gone():
    led = StallLedger(WINDOW_S)
    led.record("p", 2.0, 5)
    led.record("p", 1.0, 1)                           # older than the last: ignored
    assert list(led.readings["p"]) == [(2.0, 5)]
    led.record("q", 2.0, 5)
    led.retain({"q"})
    assert set(led.readings) == {"q"}
