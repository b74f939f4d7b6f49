"""Loading policies: shipped files, name resolution, defaults, immutability, reload use."""

import os
from pathlib import Path

import pydantic
import pytest

from agentd.errors import PolicyError, RequestError
from agentd.policy import check_file, load_policy, load_policy_text, policy_search_path, resolve_policy
from agentd.policy.loader import ENV_POLICY_DIR, detect_host_memory, shipped_policy_dirs

GiB = 2**30
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
SHIPPED = sorted(REPO_POLICIES.glob("*.yaml"))


def test_the_promised_policies_are_shipped():
    assert {"default", "multi-tenant", "laptop"} <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_policy_loads_and_checks_clean(path):
    for host in (4 * GiB, 512 * GiB):     # a small VM and a big server
        policy = load_policy(path, host_memory_bytes=host)
        assert policy.source == str(path)
        assert policy.agent_class().name == policy.defaults.agent_class
        assert policy.tool_class().name == policy.defaults.tool_class
        for rule in policy.tool_rules:
            assert rule.class_ in policy.tool_classes
    assert check_file(path) == []


@pytest.mark.parametrize("name", ["default", "multi-tenant", "laptop"])
def test_shipped_policies_load_by_name(name, monkeypatch):
    monkeypatch.delenv(ENV_POLICY_DIR, raising=False)
    policy = load_policy(name, host_memory_bytes=8 * GiB)
    assert Path(policy.source).name == f"{name}.yaml"


def test_shipped_dir_is_found_from_the_source_tree():
    assert REPO_POLICIES in shipped_policy_dirs()


def test_env_dir_comes_first(tmp_path, monkeypatch):
    (tmp_path / "default.yaml").write_text("version: 1\nagent_classes: {mine: {}}\n"
                                           "defaults: {agent_class: mine}\n")
    monkeypatch.setenv(ENV_POLICY_DIR, str(tmp_path))
    assert policy_search_path()[0] == tmp_path
    policy = load_policy("default", host_memory_bytes=GiB)
    assert policy.source == str(tmp_path / "default.yaml")
    assert list(policy.agent_classes) == ["mine"]


def test_unknown_name_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_POLICY_DIR, str(tmp_path))
    with pytest.raises(PolicyError) as info:
        load_policy("defualt")
    msg = str(info.value)
    assert "no policy named 'defualt' (did you mean 'default'?)" in msg
    assert str(tmp_path) in msg and "/etc/agentd/policies" in msg


def test_paths_are_not_searched(tmp_path):
    assert resolve_policy("x/default") == Path("x/default")
    assert resolve_policy("default.yaml") == Path("default.yaml")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "missing.yaml")
    assert f"{tmp_path}/missing.yaml: cannot read policy: No such file or directory" in str(info.value)


def test_check_file_lists_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagent_classes:\n  normal: {priority: 2000, cpu: {weight: 0}}\n")
    assert check_file(bad) == [
        f"{bad}:3: agent_classes.normal.priority: priority 2000 is out of range: expected 0..1000",
        f"{bad}:3: agent_classes.normal.cpu.weight: cpu weight 0 is out of range: expected 1..10000",
    ]


def test_minimal_policy_gets_documented_defaults():
    p = load_policy_text("version: 1\n", "min.yaml", host_memory_bytes=10 * GiB)
    assert list(p.agent_classes) == ["normal"]
    assert set(p.tool_classes) == {"interactive", "normal", "batch"}
    assert p.tool_classes["interactive"].priority > p.tool_classes["normal"].priority > \
        p.tool_classes["batch"].priority
    assert p.daemon.socket == "/run/agentd/agentd.sock" and p.daemon.root == "auto"
    assert p.daemon.metrics_listen == "127.0.0.1:9464"
    assert p.pressure.steps == ["throttle", "freeze", "kill"]
    assert p.pressure.budget == 9 * GiB
    assert p.forecast.min_high == 64 * 2**20
    assert p.agent_classes["normal"].kill_main_allowed is False
    assert p.detection.housekeeping, "known agents' housekeeping is built in"


def test_sizes_units_and_cpu():
    p = load_policy_text("""
version: 1
agent_classes:
  normal:
    memory: {min: 1048576, low: 512M, high: 1.5Gi, max: 50%}
    cpu: {weight: 300, max: 250%}
    pids: {max: 100}
  other:
    memory: {high: max, max: 1Gi}
    cpu: {max: 2}
    pids: {max: max}
""", "s.yaml", host_memory_bytes=8 * GiB)
    m = p.agent_classes["normal"].memory
    assert (m.min, m.low, m.high, m.max) == (2**20, 512 * 10**6, int(1.5 * GiB), 4 * GiB)
    assert p.agent_classes["normal"].cpu.max == 2.5 and p.agent_classes["normal"].pids.max == 100
    o = p.agent_classes["other"]
    assert (o.memory.high, o.memory.max, o.cpu.max, o.pids.max) == (None, GiB, 2.0, None)


def test_policy_is_frozen():
    p = load_policy_text("version: 1\n", "f.yaml", host_memory_bytes=GiB)
    with pytest.raises(pydantic.ValidationError):
        p.agent_classes["normal"].priority = 1
    with pytest.raises(pydantic.ValidationError):
        p.version = 2


def test_failed_reload_leaves_the_last_good_policy():
    good = load_policy_text("version: 1\nagent_classes: {normal: {priority: 70}}\n", "p.yaml",
                            host_memory_bytes=GiB)
    current = good
    try:
        current = load_policy_text("version: 1\nagent_classes: {normal: {priority: 7000}}\n",
                                   "p.yaml", host_memory_bytes=GiB)
    except PolicyError as err:
        assert "priority 7000 is out of range" in str(err) and err.source == "p.yaml"
    assert current is good and current.agent_class("normal").priority == 70


def test_anchors_and_merge_keys():
    p = load_policy_text("""
version: 1
defaults: {agent_class: derived}
agent_classes:
  base: &base
    priority: 300
    memory: {max: 2Gi}
  derived:
    <<: *base
    priority: 600
""", "m.yaml", host_memory_bytes=GiB)
    d = p.agent_classes["derived"]
    assert d.priority == 600 and d.memory.max == 2 * GiB
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\nagent_classes:\n  normal: &b {priority: 5000}\n"
                         "  derived:\n    <<: *b\n    cpu: {weight: 5}\n", "m.yaml", host_memory_bytes=GiB)
    # an error in a merged mapping points at its own line, not at the merge
    assert "m.yaml:3: agent_classes.normal.priority" in str(info.value)


def test_agent_class_lookup():
    p = load_policy("multi-tenant", host_memory_bytes=64 * GiB)
    assert p.agent_class("high").priority > p.agent_class("low").priority
    assert p.agent_class().name == "low"
    with pytest.raises(RequestError) as info:
        p.agent_class("vip")
    assert info.value.code == "unknown_class"
    assert "no agent class 'vip'" in str(info.value) and "high, low, normal" in str(info.value)


def test_multi_tenant_policy_keeps_high_agents_above_low():
    p = load_policy("multi-tenant", host_memory_bytes=64 * GiB)
    high, low = p.agent_class("high"), p.agent_class("low")
    assert high.cpu.weight > low.cpu.weight and high.gpu.priority > low.gpu.priority
    assert high.memory.max is None and low.memory.max < 64 * GiB     # only best-effort agents are capped
    assert high.memory.low > (low.memory.low or 0)                   # and high ones are protected
    assert p.defaults.honour_declared_class is False


def test_laptop_policy_leaves_memory_for_the_desktop():
    host = 16 * GiB
    p = load_policy("laptop", host_memory_bytes=host)
    for cls in p.agent_classes.values():
        assert cls.memory.max is not None and cls.memory.max < host
        assert cls.cpu.weight < 100       # below the desktop session's default weight


def test_host_memory_is_detected_when_not_given():
    p = load_policy_text("version: 1\n", "h.yaml")
    assert p.host_memory_bytes == detect_host_memory() > 0
    assert os.sysconf("SC_PHYS_PAGES") > 0
