"""bench/forecast.py: how a tool call's true peak is derived from a trace, and the replay on
literal traces and on real ones from the shared trace set."""

import importlib.util
import json
import os
import shutil

import pytest

from agentd.forecast import DEFAULT_PREDICTOR, FLOOR_BYTES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACES = os.environ.get("AGENTD_TRACES", os.path.join(REPO, "..", "shared", "traces"))
MB = 10**6

_spec = importlib.util.spec_from_file_location("bench_forecast", os.path.join(REPO, "bench", "forecast.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def trace(samples, calls, task="t", total=16 * 10**9):
    return {"task": task, "instance": task, "mem_total_bytes": total,
            "samples": [[t, m, 0.0] for t, m in samples],
            "tool_calls": [{"start_s": s, "end_s": e, "tool": tool, "command": cmd}
                           for s, e, tool, cmd in calls]}


def real(name):
    path = os.path.join(TRACES, name)
    if not os.path.exists(path):
        pytest.skip(f"shared trace {path} not present (set AGENTD_TRACES to the traces folder)")
    with open(path) as fh:
        return json.load(fh)


def test_true_peak_is_growth_over_the_pre_call_baseline():
    t = trace([(0, 200 * MB), (1, 210 * MB), (2, 700 * MB), (3, 650 * MB), (4, 220 * MB)],
              [(1.5, 3.5, "Bash", "pytest")])
    (c,) = bench.derive_calls(t)
    assert c["baseline"] == 210 * MB            # last sample at or before the start
    assert c["growth"] == 490 * MB              # max of 2 s, 3 s and the first sample after the end
    assert c["true"] == 490 * MB and c["counted"]


def test_short_call_is_seen_by_the_next_sample_and_floored():
    t = trace([(0, 200 * MB), (1, 205 * MB), (2, 200 * MB)],
              [(0.2, 0.3, "Bash", "git status"), (1.1, 1.2, "Bash", "ls")])
    a, b = bench.derive_calls(t)
    assert a["growth"] == 5 * MB and a["true"] == FLOOR_BYTES
    assert b["growth"] == 0 and b["true"] == FLOOR_BYTES     # memory fell: growth is 0, not negative


def test_only_non_overlapping_bash_calls_count():
    t = trace([(i, 200 * MB) for i in range(10)],
              [(1, 2, "Read", ""), (3, 6, "Bash", "pytest a"), (4, 5, "Bash", "pytest b"),
               (7, 8, "Bash", "git diff"), (7.5, 7.6, "Grep", "")])
    calls = bench.derive_calls(t)
    assert [c["command"] for c in calls] == ["pytest a", "pytest b", "git diff"]
    assert [c["counted"] for c in calls] == [False, False, True]


def test_replay_learns_online_and_static_oracle_never_under_predicts():
    # the same heavy command three times: the first is a cold start, the later ones learn
    samples, calls, t = [], [], 0
    for k in range(3):
        samples += [(t, 200 * MB), (t + 1, 200 * MB), (t + 2, 600 * MB), (t + 3, 200 * MB)]
        calls.append((t + 1.5, t + 2.5, "Bash", "python big.py"))
        t += 4
    tr = trace(samples, calls)
    pairs = bench.replay([tr], DEFAULT_PREDICTOR)
    assert [true for _, true in pairs] == [400 * MB] * 3
    assert pairs[0][0] >= 400 * MB              # cold start: the class prior covers it
    assert all(f >= 400 * MB for f, _ in pairs[1:])
    assert pairs[2][0] < pairs[0][0]            # learnt: tighter than the prior
    static = bench.replay([tr], bench.STATIC)
    assert all(f >= true for f, true in static)



def test_first_heavy_run_of_a_program_in_an_agent_is_told_apart():
    # pytest light, pytest heavy, pytest heavy again, then pip heavy: the first heavy pytest
    # and the pip have no earlier heavy run of their program in this agent; a second agent's
    # first heavy pytest has none in its own.
    samples = [(i, 200 * MB) for i in range(20)]
    samples[3] = (3, 500 * MB)
    samples[6] = (6, 500 * MB)
    samples[9] = (9, 500 * MB)
    calls = [(0.5, 1.5, "Bash", "pytest a"), (2.5, 3.5, "Bash", "pytest b"), (5.5, 6.5, "Bash", "pytest a"),
             (8.5, 9.5, "Bash", "pip install x"), (11.5, 12.5, "Bash", "git status")]
    one, two = trace(samples, calls, task="one"), trace(samples, calls[2:3], task="two")
    assert bench.first_heavy([one, two]) == [True, True, False, True, True, True]


def test_cli_on_real_traces_writes_the_documented_json(tmp_path, capsys):
    folder = tmp_path / "traces"
    folder.mkdir()
    for name in ("local.dask__dask-5510.json", "study.pytorch__ignite-1077.20260305_170357.json"):
        real(name)
        shutil.copy(os.path.join(TRACES, name), folder / name)
    out = tmp_path / "r.json"
    assert bench.main(["--traces", str(folder), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["default"] == DEFAULT_PREDICTOR
    assert {DEFAULT_PREDICTOR, "fixed", "last", bench.STATIC} <= set(res["predictors"])
    counts = {r["tool_calls"] for r in res["predictors"].values()}
    assert len(counts) == 1 and counts.pop() > 0
    counts_all = res["predictors"][DEFAULT_PREDICTOR]["tool_calls"]
    for r in res["predictors"].values():
        assert set(r) == {"under_prediction_rate", "overprovision_median", "overprovision_p95",
                          "tool_calls"}
        assert 0 <= r["under_prediction_rate"] <= 1
        assert r["overprovision_median"] <= r["overprovision_p95"]
    assert res["predictors"][bench.STATIC]["under_prediction_rate"] == 0
    assert set(res["above_floor"]) == set(res["predictors"])
    for r in res["above_floor"].values():      # the heavy calls: a subset of the scored ones
        assert 0 < r["tool_calls"] <= counts_all
    assert "| " + DEFAULT_PREDICTOR + " (default) |" in capsys.readouterr().out


def test_halves_print_the_heavy_call_headline_per_half(tmp_path, capsys):
    folder = tmp_path / "traces"
    folder.mkdir()
    for name in ("local.dask__dask-5510.json", "study.pytorch__ignite-1077.20260305_170357.json"):
        real(name)
        shutil.copy(os.path.join(TRACES, name), folder / name)
    halves = {h: len(bench.load_traces(str(folder), h)) for h in "ab"}
    assert bench.main(["--traces", str(folder), "--halves"]) == 0
    out = capsys.readouterr().out
    assert "| traces | heavy calls (above the floor) |" in out
    assert "| all (2) |" in out
    assert "| traces | first heavy run of its program in its agent: calls, under / median |" in out
    for h, n in halves.items():
        assert (f"| half {h} ({n}) |" in out) == (n > 0)


def test_real_trace_gigabyte_pytest_is_measured():
    calls = bench.derive_calls(real("local.dask__dask-5510.json"))
    heavy = max(calls, key=lambda c: c["growth"])
    assert "pytest" in heavy["command"] and heavy["growth"] > 10**9
    assert all(c["true"] >= FLOOR_BYTES for c in calls)


def test_default_beats_last_observed_on_the_shared_traces():
    if not os.path.isdir(TRACES):
        pytest.skip(f"shared traces {TRACES} not present")
    traces = bench.load_traces(TRACES)
    default = bench.score(bench.replay(traces, DEFAULT_PREDICTOR))
    last = bench.score(bench.replay(traces, "last"))
    assert default["under_prediction_rate"] < last["under_prediction_rate"]


def test_any_folder_in_the_format_is_accepted(tmp_path, capsys):
    odd = [trace([], [(1, 2, "Bash", "pytest")], task="no-samples"),
           trace([(0, 100 * MB), (1, 100 * MB)], [(0.5, 0.6, "Read", "")], task="no-bash"),
           trace([(0, 100 * MB), (1, 150 * MB)], [(0.5, 0.4, "Bash", "")], task="end-before-start")]
    for t in odd:
        (tmp_path / f"{t['task']}.json").write_text(json.dumps(t))
    (tmp_path / "README.md").write_text("not a trace")
    out = tmp_path / "r.json"
    assert bench.main(["--traces", str(tmp_path), "--json", str(out)]) == 0
    # strict JSON: no NaN even where nothing counted
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert all(r["tool_calls"] == 1 for r in res["predictors"].values())


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--traces", str(tmp_path)])


def test_the_default_configuration_is_read_from_the_shipped_policy():
    from agentd.policy.loader import load_policy
    shipped = load_policy(os.path.join(REPO, "policies", "default.yaml"), host_memory_bytes=16 * 10**9).forecast
    cfg = bench.Config()
    assert cfg.path == os.path.join(REPO, "policies", "default.yaml")
    assert cfg.quantile == shipped.quantile and cfg.args("quantile") == {"q": shipped.quantile}
    assert cfg.classify("cd repo && pytest -x", 16 * 10**9)[0] == "batch"
    assert cfg.classify("git status", 16 * 10**9) == ("interactive", 1 << 30)


POLICY = """\
version: 1
tool_classes:
  normal: {memory: {max: 100Mi}}
  batch: {memory: {max: 50%}}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
forecast: {quantile: QUANTILE}
"""


def test_the_policy_decides_classes_caps_and_quantile(tmp_path, capsys):
    # A cold `python x.py` is a normal call (1 GiB prior) cut to the class's 100 MiB cap; a
    # cold pytest is a batch call (unlimited prior) cut to 50% of the trace's 1 GB.
    t = trace([(0, 200 * MB), (1, 200 * MB), (2, 250 * MB), (3, 200 * MB), (4, 200 * MB), (5, 700 * MB),
               (6, 200 * MB)], [(0.5, 2.5, "Bash", "python x.py"), (4.5, 5.5, "Bash", "pytest -q")], total=10**9)
    (tmp_path / "p.yaml").write_text(POLICY.replace("QUANTILE", "0.95"))
    cfg = bench.Config(str(tmp_path / "p.yaml"))
    pairs = bench.replay([t], cfg.predictor, config=cfg)
    assert [f for f, _ in pairs] == [100 << 20, 10**9 // 2]
    without = bench.replay([t], cfg.predictor)                    # no policy: no caps
    assert without[0][0] > 100 << 20
    # The CLI reports the policy's settings, and scores what it reads.
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "t.json").write_text(json.dumps(t))
    (tmp_path / "q5.yaml").write_text(POLICY.replace("QUANTILE", "0.5"))
    out = tmp_path / "r.json"
    assert bench.main(["--traces", str(folder), "--policy", str(tmp_path / "q5.yaml"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["quantile"] == 0.5 and res["policy"] == str(tmp_path / "q5.yaml")
    assert "quantile 0.5" in capsys.readouterr().out
