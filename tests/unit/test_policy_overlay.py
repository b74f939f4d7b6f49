"""An agent's own policy under the daemon's: what it may tighten, what is refused, and the
policy the agent then runs under."""

import pytest

from agentd.errors import PolicyError
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy, load_policy_text
from agentd.policy.overlay import agent_policy

GiB = 1 << 30
HOST = 16 * GiB

DAEMON = """\
version: 1
agent_classes:
  normal: {priority: 50, memory: {high: 6Gi, max: 8Gi}, cpu: {weight: 100}, pids: {max: 4096}}
  low: {priority: 10, memory: {max: 4Gi}}
tool_classes:
  normal: {priority: 50, memory: {max: 2Gi}}
  batch: {priority: 20, latency: batch, memory: {max: 3Gi}, stragglers: wait}
tool_rules:
  - {name: builds, match: {program: [make]}, class: batch, memory: {max: 4Gi}}
"""


@pytest.fixture
def daemon():
    return load_policy_text(DAEMON, "/etc/agentd/policies/d.yaml", host_memory_bytes=HOST)


def problems(daemon, text):
    with pytest.raises(PolicyError) as info:
        agent_policy(daemon, text, "mine.yaml")
    return [str(p) for p in info.value.problems]


def test_tighter_classes_and_own_rules_apply_to_the_agent(daemon):
    view = agent_policy(daemon, """\
version: 1
agent_classes:
  normal: {priority: 40, memory: {max: 2Gi}}
tool_classes:
  batch: {memory: {max: 1Gi}, stragglers: kill}
tool_rules:
  - {name: tests, match: {program: [pytest]}, class: batch}
""", "mine.yaml")
    cls = view.agent_classes["normal"]
    # Written keys replace the daemon's; the rest (cpu, pids) are the daemon's; the
    # daemon's high is pulled under the tighter max.
    assert (cls.priority, cls.memory.max, cls.memory.high, cls.pids.max) == (40, 2 * GiB, 2 * GiB, 4096)
    assert view.agent_classes["low"] == daemon.agent_classes["low"]
    name, prio, limits = Planner(view, HOST).agent_limits("normal")
    assert (prio, limits["memory.max"], limits["pids.max"]) == (40, str(2 * GiB), "4096")
    plan = Planner(view, HOST).plan_tool(None, ["pytest", "-q"])
    assert (plan.tool_class, plan.rule, plan.limits["memory.max"], plan.stragglers) == \
        ("batch", "tests", str(GiB), "kill")
    # The daemon's own rules do not apply to this agent: make falls to the default class.
    assert Planner(view, HOST).plan_tool(None, ["make"]).tool_class == "normal"
    assert view.source == "mine.yaml (under /etc/agentd/policies/d.yaml)"
    assert daemon.agent_classes["normal"].memory.max == 8 * GiB        # the daemon's is untouched


def test_looser_keys_unknown_classes_and_host_wide_sections_are_refused_with_lines(daemon):
    got = problems(daemon, """\
version: 1
agent_classes:
  normal: {priority: 60, memory: {max: 16Gi}, kill_main_allowed: true}
  vip: {priority: 5}
tool_classes:
  batch: {latency: interactive, stragglers: wait}
tool_rules:
  - {name: builds, match: {program: [make]}, class: batch, memory: {max: 5Gi}}
  - {name: ok, match: {program: [cargo]}, class: batch, memory: {max: 4Gi}}
pressure: {step_interval_s: 9}
""")
    d = "/etc/agentd/policies/d.yaml"
    assert got == [
        f"mine.yaml:3: agent_classes.normal.kill_main_allowed: True differs from the daemon's False for agent "
        f"class 'normal': an agent's policy may only tighten the daemon's ({d}); leave it out to use the daemon's",
        f"mine.yaml:3: agent_classes.normal.memory.max: 16.0 GiB is above the daemon's 8.0 GiB for agent class "
        f"'normal': an agent's policy may only tighten the daemon's ({d})",
        f"mine.yaml:3: agent_classes.normal.priority: 60 is above the daemon's 50 for agent class 'normal': an "
        f"agent's policy may only tighten the daemon's ({d})",
        f"mine.yaml:4: agent_classes.vip: agent class 'vip' is not defined by the running daemon's policy {d} "
        "(defined: low, normal); an agent's policy may only tighten the daemon's classes",
        f"mine.yaml:6: tool_classes.batch.latency: 'interactive' comes before the daemon's 'batch' for tool class "
        f"'batch': an agent's policy may only tighten the daemon's ({d})",
        f"mine.yaml:8: tool_rules[0].memory.max: 5.0 GiB is above what the daemon's policy {d} allows tool class "
        "'batch' (4.0 GiB)",
        f"mine.yaml:10: pressure: pressure is host-wide: the running daemon's policy {d} sets it for every agent; "
        "remove this section (or start the daemon with this policy)",
    ]


def test_an_invalid_policy_is_refused_as_it_would_be_anywhere(daemon):
    assert problems(daemon, "version: 1\nagent_classes:\n  normal: {priority: 5000}\n") == [
        "mine.yaml:3: agent_classes.normal.priority: priority 5000 is out of range: expected 0..1000"]


def test_the_daemons_own_policy_fits_under_itself(daemon):
    view = agent_policy(daemon, DAEMON, "same.yaml")
    assert view.agent_classes == daemon.agent_classes and view.tool_rules == daemon.tool_rules


@pytest.mark.parametrize("name", ["default", "multi-tenant", "laptop"])
def test_shipped_policies_fit_under_themselves(name):
    p = load_policy(name, host_memory_bytes=HOST)
    with open(p.source) as f:
        agent_policy(p, f.read(), p.source)


def test_a_rule_may_repeat_only_a_gpu_prior_the_daemon_gives_its_class():
    daemon = load_policy("default", host_memory_bytes=HOST)
    ok = "version: 1\ntool_rules:\n  - {name: t, match: {program: [train.py]}, class: normal, gpu: {prior: 4Gi}}\n"
    assert agent_policy(daemon, ok, "mine.yaml").tool_rules[0].gpu.prior == "4Gi"
    big = "version: 1\ntool_rules:\n  - name: t\n    match: {program: [x.py]}\n    class: normal\n" \
          "    gpu: {prior: 70Gi}\n"
    assert problems(daemon, big) == [
        f"mine.yaml:6: tool_rules[0].gpu.prior: gpu.prior '70Gi' is not one the daemon's policy {daemon.source} "
        "gives tool class 'normal' ('4Gi'); leave it out"]
