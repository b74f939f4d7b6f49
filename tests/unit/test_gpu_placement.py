"""Pure GPU placement: priority order, room, budgets, waiting, and the call's environment."""

from agentd.gpu import placement as pl

GiB = 1 << 30


def req(key, prio, forecast, fallback=pl.OFFLOAD, agent="a", seq=None):
    return pl.Request(key, agent, prio, seq if seq is not None else int(key[-1]) if key[-1].isdigit() else 0,
                      forecast, fallback)


def test_fits_goes_to_the_device_with_most_room():
    rooms = [pl.Room(0, 80 * GiB, 70 * GiB), pl.Room(1, 80 * GiB, 20 * GiB), pl.Room(2, 80 * GiB, 30 * GiB)]
    out = pl.place([req("c1", (50, 50), 5 * GiB)], rooms)
    assert out["c1"].outcome == pl.GPU and out["c1"].device == 1


def test_reservations_count_as_used():
    rooms = [pl.Room(0, 16 * GiB, 4 * GiB, reserved=10 * GiB)]
    assert rooms[0].free == 2 * GiB
    out = pl.place([req("c1", (50, 50), 3 * GiB)], rooms)
    assert out["c1"].outcome == pl.OFFLOAD and out["c1"].reason == "no_room" and out["c1"].free == 2 * GiB


def test_higher_priority_takes_the_gpu_first_lower_one_offloaded_or_waits():
    rooms = [pl.Room(0, 16 * GiB, 6 * GiB)]           # room for one 8 GiB call
    low_off = req("c1", (100, 50), 8 * GiB, pl.OFFLOAD, seq=1)
    low_wait = req("c2", (100, 50), 8 * GiB, pl.WAIT, seq=2)
    high = req("c3", (800, 50), 8 * GiB, pl.WAIT, seq=3)
    out = pl.place([low_off, low_wait, high], rooms)
    assert out["c3"].outcome == pl.GPU                # arrived last, placed first
    assert out["c1"].outcome == pl.OFFLOAD
    assert out["c2"].outcome == pl.WAIT


def test_agent_priority_dominates_tool_priority():
    rooms = [pl.Room(0, 10 * GiB, 0)]
    a = req("c1", (100, 900), 8 * GiB, pl.WAIT, seq=1)
    b = req("c2", (800, 1), 8 * GiB, pl.WAIT, seq=2)
    out = pl.place([a, b], rooms)
    assert (out["c2"].outcome, out["c1"].outcome) == (pl.GPU, pl.WAIT)


def test_a_blocked_waiter_keeps_later_calls_off_the_room_it_needs():
    # 6 GiB free: the 8 GiB high-priority waiter does not fit; a 2 GiB lower-priority call would,
    # but room that frees up must go to the waiter first.
    rooms = [pl.Room(0, 16 * GiB, 10 * GiB)]
    big = req("c1", (800, 50), 8 * GiB, pl.WAIT, seq=1)
    small_wait = req("c2", (100, 50), 2 * GiB, pl.WAIT, seq=2)
    small_off = req("c3", (100, 50), 2 * GiB, pl.OFFLOAD, seq=3)
    out = pl.place([big, small_wait, small_off], rooms)
    assert out["c1"].outcome == pl.WAIT and out["c1"].reason == "no_room"
    assert out["c2"].outcome == pl.WAIT and out["c2"].reason == "higher_priority_waiting"
    assert out["c3"].outcome == pl.OFFLOAD and out["c3"].reason == "higher_priority_waiting"
    # Same priority: arrival order holds.
    out = pl.place([req("c1", (100, 50), 8 * GiB, pl.WAIT, seq=1), req("c2", (100, 50), 1 * GiB, pl.WAIT, seq=2)],
                   rooms)
    assert out["c2"].reason == "earlier_waiting"
    # An offloading call that does not fit does not block anyone.
    out = pl.place([req("c1", (800, 50), 8 * GiB, pl.OFFLOAD, seq=1), req("c2", (100, 50), 2 * GiB, pl.WAIT, seq=2)],
                   rooms)
    assert (out["c1"].outcome, out["c2"].outcome) == (pl.OFFLOAD, pl.GPU)


def test_agent_budget_limits_its_calls_but_not_others():
    rooms = [pl.Room(0, 80 * GiB, 0)]
    budgets = {"lo": pl.Budget(10 * GiB, held=7 * GiB), "hi": pl.Budget(None)}
    out = pl.place([req("c1", (100, 50), 4 * GiB, pl.WAIT, agent="lo", seq=1),
                    req("c2", (50, 50), 4 * GiB, pl.WAIT, agent="hi", seq=2)], rooms, budgets)
    assert out["c1"].outcome == pl.WAIT and out["c1"].reason == "agent_budget"
    assert out["c2"].outcome == pl.GPU              # a budget-blocked call blocks nobody else
    # Within budget, the agent's placements add up: the second call no longer fits the budget.
    budgets = {"lo": pl.Budget(10 * GiB, held=0)}
    out = pl.place([req("c1", (100, 50), 6 * GiB, agent="lo", seq=1),
                    req("c2", (100, 50), 6 * GiB, agent="lo", seq=2)], rooms, budgets)
    assert (out["c1"].outcome, out["c2"].outcome, out["c2"].reason) == (pl.GPU, pl.OFFLOAD, "agent_budget")
    # Waiting could never help a call larger than the whole budget: offloaded even if it would wait.
    out = pl.place([req("c1", (100, 50), 12 * GiB, pl.WAIT, agent="lo")], rooms, budgets)
    assert (out["c1"].outcome, out["c1"].reason) == (pl.OFFLOAD, "over_budget_alone")


def test_devices_fill_up_within_one_decision():
    rooms = [pl.Room(0, 16 * GiB, 0), pl.Room(1, 16 * GiB, 0)]
    calls = [req(f"c{i}", (50, 50), 10 * GiB, pl.WAIT, seq=i) for i in range(3)]
    out = pl.place(calls, rooms)
    assert sorted(out[c.key].device for c in calls[:2]) == [0, 1]
    assert out["c2"].outcome == pl.WAIT


def test_environment():
    assert pl.gpu_env("GPU-abc") == {"CUDA_VISIBLE_DEVICES": "GPU-abc"}
    # MPS variables only when an MPS daemon would read them.
    assert pl.gpu_env("GPU-abc", mps=False, threads=50, pinned_limit=GiB) == {"CUDA_VISIBLE_DEVICES": "GPU-abc"}
    env = pl.gpu_env("GPU-abc", mps=True, threads=50, pinned_limit=8 * GiB)
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-abc", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
                   "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=8192M"}
    assert pl.cpu_env() == {"CUDA_VISIBLE_DEVICES": ""}
