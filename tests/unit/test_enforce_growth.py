"""The memory watch's projection (agentd/enforce/growth.py) with literals: a call's growth
within the horizon is its pace, held below by a forecast with evidence and by the room
under every memory.max above it; only growth that reaches the shared memory left is urgent."""

from agentd.enforce.growth import project

MiB = 1 << 20


def test_pace_alone_when_nothing_bounds_it():
    p = project(100 * MiB, 2.0, 150 * MiB)
    assert (p.grow, p.pace, p.bound, p.urgent) == (200 * MiB, 200 * MiB, None, True)
    p = project(50 * MiB, 2.0, 150 * MiB)
    assert (p.grow, p.bound, p.urgent) == (100 * MiB, None, False)


def test_the_reported_case_a_call_capped_by_its_agent_cannot_use_up_the_shared_pool():
    """359.1 MiB/s over 2 s is 718 MiB, past 631.2 MiB free; but the agent's 192 MiB
    memory.max leaves the call 150 MiB: it cannot use the pool up."""
    rate, free = int(359.1 * MiB), int(631.2 * MiB)
    assert project(rate, 2.0, free).urgent                    # the pace alone: a false alarm
    p = project(rate, 2.0, free, limit_rooms=[("its own memory.max", None),
                                              ("its agent's memory.max", 150 * MiB)])
    assert (p.grow, p.bound, p.urgent) == (150 * MiB, "its agent's memory.max", False)
    assert p.pace == int(rate * 2.0)


def test_the_tightest_of_several_limits_wins():
    rooms = [("its own memory.max", 300 * MiB), ("its agent's memory.max", 120 * MiB),
             ("agentd's memory.max", 500 * MiB)]
    p = project(400 * MiB, 2.0, 1000 * MiB, limit_rooms=rooms)
    assert (p.grow, p.bound, p.urgent) == (120 * MiB, "its agent's memory.max", False)
    # The same bound, with less shared memory left than it: urgent.
    p = project(400 * MiB, 2.0, 100 * MiB, limit_rooms=rooms)
    assert (p.grow, p.urgent) == (120 * MiB, True)


def test_growth_that_reaches_exactly_what_is_left_uses_it_up():
    """agentd's root limit leaves 64 MiB, which is also all the shared room: a call bounded
    there takes the last byte (urgent), not one short of it."""
    p = project(200 * MiB, 2.0, 64 * MiB, limit_rooms=[("agentd's memory.max", 64 * MiB)])
    assert (p.grow, p.urgent) == (64 * MiB, True)


def test_a_forecast_with_evidence_bounds_it_below_the_limits():
    p = project(250 * MiB, 2.0, 300 * MiB, forecast_left=40 * MiB,
                limit_rooms=[("its agent's memory.max", 100 * MiB)])
    assert (p.grow, p.bound, p.urgent) == (40 * MiB, "its forecast", False)


def test_full_limits_and_no_growth_are_never_urgent_and_unknown_free_memory_neither():
    assert not project(0, 2.0, 0).urgent
    p = project(300 * MiB, 2.0, 10 * MiB, limit_rooms=[("its own memory.max", 0)])
    assert (p.grow, p.urgent) == (0, False)                    # at its cap: the kernel's to answer
    assert not project(300 * MiB, 2.0, None).urgent
    assert project(-5 * MiB, 2.0, 10 * MiB).grow == 0          # shrinking is no growth
