"""The PSI adapter's pure parts: parsing pressure files, the trigger string, and the poll
fallback's trigger semantics."""

import pytest

from agentd.kernel.psi import PressurePoller, parse, trigger_spec

SAMPLE = ("some avg10=1.50 avg60=0.20 avg300=0.00 total=123456\n"
          "full avg10=0.75 avg60=0.10 avg300=0.00 total=65432\n")


def test_parse_some_and_full():
    p = parse(SAMPLE)
    assert p["some"] == {"avg10": 1.5, "avg60": 0.2, "avg300": 0.0, "total": 123456}
    assert p["full"]["total"] == 65432


def test_parse_tolerates_missing_full_and_junk():
    p = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nbogus line\n")
    assert p == {"some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 7}}


def test_trigger_spec_is_nul_terminated():
    assert trigger_spec(150000, 2000000) == b"some 150000 2000000\0"
    assert trigger_spec(1, 500000, "full") == b"full 1 500000\0"
    with pytest.raises(ValueError):
        trigger_spec(1, 2, "half")


def test_poller_fires_when_the_window_holds_the_threshold_once_per_window():
    p = PressurePoller(threshold_us=200_000, window_us=2_000_000)
    assert not p.check("k", 1_000_000, 0.0)
    assert not p.check("k", 1_100_000, 0.5)          # 100 ms stalled so far
    assert p.check("k", 1_250_000, 1.0)              # 250 ms within 1 s
    assert not p.check("k", 1_600_000, 1.5)          # still stalling, but one event per window
    assert p.check("k", 2_000_000, 3.1)              # a new window
    assert not p.check("k", 2_000_000, 6.0)          # no stall in the last window


def test_poller_keys_are_independent():
    p = PressurePoller(threshold_us=100, window_us=1_000_000)
    p.check("a", 0, 0.0)
    p.check("b", 0, 0.0)
    assert p.check("a", 500, 0.5)
    assert not p.check("b", 50, 0.5)
