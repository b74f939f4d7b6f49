"""The loop side of the PSI trigger thread's batches (agentd/enforce/pressure.py)."""

import time

from agentd.enforce.pressure import PressureWatch


class Triggers:
    """Stands in for psi.TriggerSet: only the keys registered now."""

    def __init__(self, *keys):
        self.live = list(keys)

    def keys(self):
        return list(self.live)


def test_a_gone_trigger_unwatches_its_key_unless_it_was_watched_again_since():
    got = []
    w = PressureWatch(500_000, 2_000_000, lambda key, now, how: got.append(key))
    w.paths = {"a": "/cg/a/memory.pressure", "b": "/cg/b/memory.pressure"}
    # "a"'s cgroup went away and an agent of the same name registered a new trigger
    # before the batch reached the loop; "b" is just gone.
    w.triggers = Triggers("a")
    w._on_events(["a"], ["a", "b"], time.monotonic())
    assert w.paths == {"a": "/cg/a/memory.pressure"}
    assert got == ["a"]
    w._on_events(["b"], [], time.monotonic())     # a late event of an unwatched key: none
    assert got == ["a"]
