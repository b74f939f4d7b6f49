"""The swap stage: memory.swap.max / memory.zswap.max per tool class, only where the host
has swap; its schema field; an agent's own policy may only tighten it."""

import types

import pytest

from agentd.errors import FeatureMissing, KernelError, PolicyError
from agentd.kernel import swap as ksw
from agentd.policy.loader import load_policy_text
from agentd.policy.overlay import agent_policy
from agentd.swap import SwapStage, build
from tests.unit.stage_world import controller, load

GiB = 1 << 30

POLICY = """\
version: 1
defaults: {agent_class: normal, tool_class: normal}
agent_classes:
  normal: {priority: 50}
tool_classes:
  normal: {priority: 50}
  cache: {priority: 40, memory: {swap_max: 1Gi}}
  free: {priority: 30, memory: {swap_max: max}}
tool_rules:
  - {name: fills, match: {program: [fill]}, class: cache}
  - {name: frees, match: {program: [free]}, class: free}
"""


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def world(tmp_path, swap=4 * GiB):
    policy = load(POLICY)
    ctl = controller(tmp_path, policy)
    fs = ctl.fs
    host = {"swap": swap}
    clock = Clock()
    stage = SwapStage(lambda: policy, swap_fn=lambda: host["swap"], clock=clock)
    ctl.hooks = [stage]
    return ctl, fs, host, clock


def swap_writes(fs, cg):
    return {n: v for c, n, v in fs.writes if c == cg and n in (ksw.MEMORY_SWAP_MAX, ksw.MEMORY_ZSWAP_MAX)}


def test_a_tool_call_gets_no_swap_by_default_and_its_class_s_where_set(tmp_path):
    ctl, fs, _, _ = world(tmp_path)
    agent = ctl.create_agent("ag")
    plain = ctl.start_tool(agent, None, ["make"])
    fill = ctl.start_tool(agent, None, ["fill"])
    free = ctl.start_tool(agent, None, ["free"])
    assert swap_writes(fs, plain.cgroup) == {ksw.MEMORY_SWAP_MAX: "0", ksw.MEMORY_ZSWAP_MAX: "0"}
    assert swap_writes(fs, fill.cgroup) == {ksw.MEMORY_SWAP_MAX: str(GiB), ksw.MEMORY_ZSWAP_MAX: str(GiB)}
    assert swap_writes(fs, free.cgroup) == {ksw.MEMORY_SWAP_MAX: "max", ksw.MEMORY_ZSWAP_MAX: "max"}
    # In the call's Placement and in what status and the tool_start event show.
    assert plain.placement.limits[ksw.MEMORY_SWAP_MAX] == "0"
    assert plain.limits_applied[ksw.MEMORY_SWAP_MAX] == "0"


def test_without_swap_on_the_host_nothing_is_written_until_swap_appears(tmp_path):
    ctl, fs, host, clock = world(tmp_path, swap=0)
    agent = ctl.create_agent("ag")
    before = ctl.start_tool(agent, None, ["make"])
    assert swap_writes(fs, before.cgroup) == {}
    assert ksw.MEMORY_SWAP_MAX not in before.placement.limits
    host["swap"] = 2 * GiB            # swapon while the daemon runs
    same = ctl.start_tool(agent, None, ["make"])
    assert swap_writes(fs, same.cgroup) == {}          # read at most every RECHECK_S
    clock.t += 10.0
    after = ctl.start_tool(agent, None, ["make"])
    assert swap_writes(fs, after.cgroup)[ksw.MEMORY_SWAP_MAX] == "0"


def test_an_unreadable_meminfo_warns_once_and_writes_nothing(tmp_path, caplog):
    ctl, fs, _, clock = world(tmp_path)

    def broken():
        raise KernelError("reading /proc/meminfo: Permission denied")
    ctl.hooks[0].swap_fn = broken
    agent = ctl.create_agent("ag")
    for _ in range(2):
        clock.t += 10.0
        t = ctl.start_tool(agent, None, ["make"])
        assert swap_writes(fs, t.cgroup) == {}
    assert sum("cannot read the host's swap" in r.message for r in caplog.records) == 1


def test_a_dry_run_observed_call_shows_its_swap_limit(tmp_path):
    ctl, _, _, _ = world(tmp_path)
    agent = ctl.create_agent("ag")
    t = ctl.observe_tool(agent, 4242, ["fill"])
    assert t.placement.limits[ksw.MEMORY_SWAP_MAX] == str(GiB)


def test_the_stage_is_not_built_where_the_kernel_offers_no_swap_file(tmp_path):
    ctl, fs, _, _ = world(tmp_path)
    app = types.SimpleNamespace(fs=fs, ctl=ctl, policy=None)
    with pytest.raises(FeatureMissing, match="memory.swap.max"):
        build(app)
    fs.write(ctl.agents_cgroup, ksw.MEMORY_SWAP_MAX, "max")
    assert isinstance(build(app), SwapStage)


def test_swap_max_is_a_size_and_only_a_tool_class_key():
    with pytest.raises(PolicyError) as info:
        load_policy_text(POLICY.replace("swap_max: 1Gi", "swap_max: lots"), "t.yaml", host_memory_bytes=16 * GiB)
    assert "swap_max" in str(info.value)
    with pytest.raises(PolicyError) as info:
        load_policy_text(POLICY.replace("normal: {priority: 50}\ntool", "normal: {priority: 50, memory: {swap_max: 0}}"
                                        "\ntool"), "t.yaml", host_memory_bytes=16 * GiB)
    assert "swap_max" in str(info.value)
    p = load_policy_text(POLICY.replace("swap_max: 1Gi", "swap_max: 25%"), "t.yaml", host_memory_bytes=16 * GiB)
    assert p.tool_class("cache").memory.swap_max == 4 * GiB


def test_an_agents_own_policy_may_lower_swap_but_not_raise_it():
    daemon = load_policy_text(POLICY, "d.yaml", host_memory_bytes=16 * GiB)
    view = agent_policy(daemon, "version: 1\ntool_classes:\n  cache: {memory: {swap_max: 512Mi}}\n", "mine.yaml")
    assert view.tool_class("cache").memory.swap_max == 512 << 20
    with pytest.raises(PolicyError) as info:
        agent_policy(daemon, "version: 1\ntool_classes:\n  normal: {memory: {swap_max: max}}\n", "mine.yaml")
    assert "swap_max" in str(info.value) and "tighten" in str(info.value)


def test_swap_total_reads_meminfo(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       16384 kB\nSwapTotal:       2048 kB\nSwapFree: 2048 kB\n")
    assert ksw.swap_total(str(tmp_path)) == 2048 * 1024
    (tmp_path / "meminfo").write_text("MemTotal:       16384 kB\n")
    assert ksw.swap_total(str(tmp_path)) == 0
