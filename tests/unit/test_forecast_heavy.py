"""The quantile predictor on commands that do real work (peaks above the floor): a known
heavy command is forecast close to its peaks, an agent's cheap runs of a usually heavy
family do not hide it, each call is one piece of evidence however many levels hold it,
and the class prior stops mattering once a class's commands have been seen."""

import pytest

from agentd.forecast import FLOOR_BYTES, Forecaster, HistoryStore, ToolCallRecord, make_predictor, signature

MiB = 1 << 20
BUDGET = 64 << 30


def fc(**args):
    return Forecaster(HistoryStore(), "quantile", host_budget=BUDGET, predictor_args=args or None)


def learn(f, cmd, peaks, agent="a", tool_class=None):
    for p in peaks:
        f.observe(ToolCallRecord.from_signature(signature(cmd), ts=0, peak_bytes=p, agent=agent,
                                                tool_class=tool_class))


def test_a_command_seen_often_is_forecast_close_to_its_peaks():
    f = fc()
    learn(f, "pytest tests/test_app.py", [300 * MiB] * 12)
    got = f.forecast("pytest tests/test_app.py", agent="a")
    assert 300 * MiB <= got.peak_bytes <= 1.3 * 300 * MiB
    assert got.source == "quantile:agent-full(12):above-floor"


def test_an_agents_cheap_runs_do_not_hide_a_usually_heavy_family():
    # Elsewhere `pip install X` needed ~200 MiB two times in three (cached installs are
    # cheap); this agent's two installs happened to be cached. Its next install is a real one
    # as often as anyone's: forecast it like the family's real installs.
    f = fc()
    for agent in "bcdef":
        learn(f, f"pip install pkg{agent}", [200 * MiB, 1 * MiB, 210 * MiB], agent=agent, tool_class="batch")
    learn(f, "pip install requests", [1 * MiB, 1 * MiB], tool_class="batch")
    assert f.forecast("pip install requests", tool_class="batch", agent="a").peak_bytes >= 200 * MiB


def test_a_command_that_stays_light_in_this_agent_is_forecast_light():
    f = fc()
    for agent in "bcdef":
        learn(f, f"pip install pkg{agent}", [200 * MiB, 1 * MiB, 210 * MiB], agent=agent, tool_class="batch")
    learn(f, "pip install requests", [1 * MiB] * 20, tool_class="batch")
    assert f.forecast("pip install requests", tool_class="batch", agent="a").peak_bytes == FLOOR_BYTES


def test_each_call_is_one_piece_of_evidence():
    # A command new to the host, run once by this agent at 1 MiB, appears at five levels of
    # the fallback chain (agent and host, full, coarse and program): that is one call, and
    # the tool class's 40 real runs still speak for the next one.
    f = fc()
    for i in range(40):
        learn(f, f"make -C lib{i}", [400 * MiB], agent=f"x{i}", tool_class="batch")
    learn(f, "cmake --build build", [1 * MiB], tool_class="batch")
    assert f.forecast("cmake --build build", tool_class="batch", agent="a").peak_bytes >= 400 * MiB


def test_other_agents_peaks_are_read_with_a_wider_quantile_than_the_agents_own():
    peaks = [p * MiB for p in (100, 120, 140, 160, 180, 200, 220, 240, 400, 110, 130, 150)]
    own, others = fc(), fc()
    learn(own, "pytest tests", peaks, agent="a")
    learn(others, "pytest tests", peaks, agent="b")
    mine = own.forecast("pytest tests", agent="a").peak_bytes
    theirs = others.forecast("pytest tests", agent="a").peak_bytes
    assert mine < theirs
    assert theirs >= 400 * MiB                # another repository's worst run is within reach


def test_an_unlimited_class_is_not_forecast_at_the_host_once_its_commands_are_seen():
    f = fc()
    for i in range(12):
        learn(f, f"pytest tests/test_{i}.py", [40 * MiB], agent=f"x{i}", tool_class="batch")
    assert f.forecast("pytest tests/test_new.py", tool_class="batch", agent="a").peak_bytes < 100 * MiB
    assert fc().forecast("pytest tests/test_new.py", tool_class="batch", agent="a").peak_bytes == BUDGET


def test_new_arguments_are_validated():
    for bad in ({"heavy_margin": 0.9}, {"heavy_share": 1.5}, {"share_weight": 0}, {"class_prior_weight": 0}):
        with pytest.raises(Exception, match=next(iter(bad))):
            make_predictor("quantile", **bad)
