"""Adaptive memory.high arithmetic on literals."""

from agentd.enforce.limits import MIN_MOVE_BYTES, adapt_high, start_high, throttle_high

MiB = 1 << 20


def test_start_high_is_forecast_times_headroom_within_floor_and_cap():
    assert start_high(100 * MiB, 1.5, 64 * MiB) == 150 * MiB
    assert start_high(10 * MiB, 1.5, 64 * MiB) == 64 * MiB
    assert start_high(1000 * MiB, 1.5, 64 * MiB, cap=1024 * MiB) == 1024 * MiB


def test_adapt_follows_the_reforecast_up_and_ignores_small_moves():
    assert adapt_high(150 * MiB, 400 * MiB, 1.5, 64 * MiB) == 600 * MiB
    assert adapt_high(600 * MiB, 402 * MiB, 1.5, 64 * MiB) is None      # 3 MiB: not worth a write
    assert MIN_MOVE_BYTES > 3 * MiB


def test_adapt_is_bounded_by_free_memory_but_never_below_usage():
    # Re-forecast wants 900 MiB; the host has 200 MiB left: grow into half of it.
    assert adapt_high(300 * MiB, 600 * MiB, 1.5, 64 * MiB, usage=250 * MiB, available=200 * MiB) == 350 * MiB
    # Nothing left: the limit stays at what the call holds (taking back is the ladder's job).
    assert adapt_high(100 * MiB, 600 * MiB, 1.5, 64 * MiB, usage=280 * MiB, available=0) == 280 * MiB


def test_adapt_respects_the_class_cap():
    assert adapt_high(300 * MiB, 2000 * MiB, 1.5, 64 * MiB, cap=1024 * MiB) == 1024 * MiB


def test_throttle_lowers_never_raises():
    assert throttle_high(400 * MiB, 0.5, 64 * MiB) == 200 * MiB
    assert throttle_high(400 * MiB, 0.5, 64 * MiB, current_high=150 * MiB) == 150 * MiB
    assert throttle_high(40 * MiB, 0.5, 64 * MiB) == 64 * MiB


def test_throttle_holds_a_call_to_what_it_has_plus_half_the_memory_left():
    # 30 MiB held, 90 MiB left under its agent's memory.max: it may grow to 75 MiB.
    assert throttle_high(30 * MiB, 0.5, 64 * MiB, current_high=130 * MiB, room=90 * MiB) == 75 * MiB
    # Nothing left: the growth stops where the call stands, not below it.
    assert throttle_high(300 * MiB, 0.5, 64 * MiB, current_high=400 * MiB, room=0) == 300 * MiB
    # Never above the limit in place.
    assert throttle_high(30 * MiB, 0.5, 64 * MiB, current_high=70 * MiB, room=90 * MiB) == 70 * MiB
