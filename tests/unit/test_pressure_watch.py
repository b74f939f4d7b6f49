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


def _pressure_file(path, total):
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def test_a_dead_trigger_thread_is_noticed_once_and_polling_takes_over(tmp_path, caplog):
    """The trigger thread died of an exception: it delivers nothing more, which looks
    like no pressure at all. The next poll (the enforcer's tick) notices, says so once,
    and from then on reads every watched file itself."""
    from agentd.kernel import psi

    got = []
    w = PressureWatch(100_000, 2_000_000, lambda key, now, how: got.append((key, how)))
    f = tmp_path / "memory.pressure"
    _pressure_file(f, 0)
    w.paths = {"a": str(f)}
    w.triggers = psi.TriggerSet()

    def broken(timeout=None):
        raise ValueError("I/O operation on closed epoll object")
    w.triggers.wait = broken
    w.triggers.start(lambda *batch: None)
    for _ in range(100):
        if w.triggers.died():
            break
        time.sleep(0.01)
    with caplog.at_level("ERROR", logger="agentd.enforce"):
        w.poll(100.0)
        assert w.mode == "poll (trigger thread died)" and w.triggers is None
        _pressure_file(f, 500_000)          # 0.5 s of stalls since: over the threshold
        w.poll(100.5)
        w.poll(101.0)
    assert got == [("a", "poll")]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["PSI trigger thread died (ValueError"]


def test_a_live_or_stopped_trigger_thread_is_not_dead():
    from agentd.kernel import psi
    ts = psi.TriggerSet()
    try:
        assert ts.died() is None            # not started
        ts.start(lambda *batch: None)
        assert ts.died() is None            # waiting
        ts.stop()
        assert ts.died() is None            # stopped on purpose
    finally:
        ts.close()
