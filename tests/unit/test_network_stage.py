"""The egress stage's decisions over doubles of its kernel adapters: which cgroup gets
which rate (fq mode) or htb class (htb and nft modes), and what is undone when calls and
agents end."""

import types

import pytest

from agentd.errors import KernelError
from agentd.model import Agent, ToolCall, ToolPlan
from agentd.network import build
from agentd.network.stage import LINGER_S, EgressStage
from agentd.policy import load_policy_text
from tests.unit.network_fakes import FakeClassifier, FakeDevice, FakeEgress, no_program

MBIT = 125_000

POLICY = """
version: 1
network: {devices: [eth9, eth8], mode: %s}
agent_classes:
  normal: {network: {egress: 40Mbit}}
  free: {}
tool_classes:
  normal: {}
  fetch: {network: {egress: 10Mbit, burst: 64Ki}}
  wide: {network: {egress: 80Mbit}}
"""


class FS:
    busy = ()                 # cgroups that still hold processes

    def populated(self, cg):
        return cg in self.busy

    def path(self, cg):
        return f"/sys/fs/cgroup/{cg}"

    ids = {}                  # cgroup -> id, where a test made it anew

    def cgroup_id(self, cg):
        return self.ids.get(cg, abs(hash(cg)) % 10**9)


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def stage(mode="auto", kernel_has_fq=True):
    policy = load_policy_text(POLICY % mode, host_memory_bytes=8 << 30)
    app = types.SimpleNamespace(policy=policy, fs=FS(), root="agentd")

    def device(name, mode=None):
        return FakeDevice(name, mode=mode, kernel_has_fq=kernel_has_fq)
    s = EgressStage(app, egress=FakeEgress(), device=device, clock=Clock())
    return s, app


def after_linger(s):
    s.clock.now += LINGER_S + 1


def agent(cls="normal", name="a"):
    return Agent(agent_id=name, cgroup=f"agentd/agents/{name}", agent_class=cls, priority=50)


def tool(a, tid, cls):
    return ToolCall(agent_id=a.agent_id, tool_id=tid, cgroup=f"{a.cgroup}/tools/{tid}", argv=["curl"],
                    plan=ToolPlan(tool_class=cls, priority=50, limits={}), cgroup_id=hash(tid) % 10**6)


def test_a_calls_entry_stays_while_processes_it_left_behind_run():
    # `stragglers: wait`: a call's background process outlives its end in the call's
    # cgroup; the call's rate holds it until the cgroup is empty, not for the linger only.
    s, app = stage()
    a = agent("free")
    s.on_agent_start(a)
    t = tool(a, "0001-fetch", "fetch")
    s.on_tool_start(a, t)
    app.fs.busy = {t.cgroup}
    s.on_tool_end(a, t, None)
    for _ in range(3):
        after_linger(s)
        s.on_sample(None)
        assert s.egress.entries[t.cgroup_id]["rate_bps"] == 10 * MBIT
    app.fs.busy = ()
    after_linger(s)
    s.on_sample(None)
    assert t.cgroup_id not in s.egress.entries


@pytest.mark.parametrize("mode,kernel_has_fq", [("auto", True), ("auto", False), ("nft", False)])
def test_an_agent_of_a_lingering_agents_name_gets_its_own_limits(mode, kernel_has_fq):
    # Agent names are their creator's choice (or the start second's): a new agent named
    # as one that ended under 30 s ago is another cgroup, with its own rate from its start,
    # kept past the old one's linger; its calls' paths repeat the old calls' too.
    s, app = stage(mode, kernel_has_fq)
    app.fs = FS()
    app.fs.ids = {}
    a = agent()
    s.on_agent_start(a)
    t = tool(a, "0001-fetch", "fetch")
    s.on_tool_start(a, t)
    s.on_tool_end(a, t, None)
    s.on_agent_end(a)
    s.clock.now += 1
    app.fs.ids = {a.cgroup: 777}                 # the same path, a new cgroup
    b = agent()
    s.on_agent_start(b)
    t2 = ToolCall(agent_id="a", tool_id="0001-fetch", cgroup=t.cgroup, argv=["curl"],
                  plan=ToolPlan(tool_class="fetch", priority=50, limits={}), cgroup_id=888)
    s.on_tool_start(b, t2)
    after_linger(s)
    s.on_sample(None)
    assert s.ids.get(b.cgroup, (None,))[0] == 777 and s.ids.get(t2.cgroup, (None,))[0] == 888, s.ids
    cids = set(s.egress.rules) if hasattr(s.egress, "rules") else set(s.egress.entries)
    assert {777, 888} <= cids and abs(hash(a.cgroup)) % 10**9 not in cids and t.cgroup_id not in cids


def test_no_device_named_means_no_stage_and_nothing_touched():
    app = types.SimpleNamespace(policy=load_policy_text("version: 1\n", host_memory_bytes=8 << 30))
    assert build(app) is None


def test_fq_mode_writes_the_agents_and_the_calls_rates():
    s, app = stage()
    a = agent()
    s.on_agent_start(a)
    t, u = tool(a, "0001-fetch", "fetch"), tool(a, "0002-normal", "normal")
    s.on_tool_start(a, t)
    s.on_tool_start(a, u)
    e = s.egress.entries
    assert e[app.fs.cgroup_id(a.cgroup)]["rate_bps"] == 40 * MBIT
    assert e[t.cgroup_id]["rate_bps"] == 10 * MBIT and e[t.cgroup_id]["burst"] == 65536
    assert u.cgroup_id not in e                     # no limit of its own: its agent's holds it
    e[t.cgroup_id].update(bytes=1000, packets=2)
    e[app.fs.cgroup_id(a.cgroup)].update(bytes=500, packets=1)
    s.on_tool_end(a, t, None)
    # What the call's sockets still hold after its exit leaves at its rate: the entry lingers.
    assert e[t.cgroup_id]["rate_bps"] == 10 * MBIT
    after_linger(s)
    s.on_sample(None)
    assert t.cgroup_id not in e
    # The agent's counters keep what its ended calls sent: a counter never goes down.
    assert s.metric_stats()["network_egress"]["a"] == {"bytes": 1500, "packets": 3, "delayed": 0, "drops": 0,
                                                           "overlimits": 0}
    s.on_agent_end(a)
    assert s.metric_stats()["network_egress"] == {}          # the agent's series go with it
    assert list(e) == [app.fs.cgroup_id(a.cgroup)]            # its own entry lingers
    after_linger(s)
    s.on_sample(None)
    assert e == {} and s.metric_stats()["network_egress"] == {}
    assert s.modes() == {"network": "fq"}


def test_an_agent_without_a_rate_gets_no_entry_but_its_limited_calls_do():
    s, app = stage()
    a = agent("free")
    s.on_agent_start(a)
    t = tool(a, "0001-fetch", "fetch")
    s.on_tool_start(a, t)
    assert list(s.egress.entries) == [t.cgroup_id]


def test_htb_mode_where_the_kernel_has_no_fq_lays_classes_under_the_agent():
    s, app = stage(kernel_has_fq=False)
    assert s.mode == "htb"
    a = agent()
    s.on_agent_start(a)
    t, w = tool(a, "0001-fetch", "fetch"), tool(a, "0002-wide", "wide")
    s.on_tool_start(a, t)
    s.on_tool_start(a, w)
    for d in s.devices:                              # every named device gets the same classes
        (group, own), fetch, wide = sorted(d.classes.items())[:2], d.classes[3], d.classes[4]
        assert group[1] == (40 * MBIT, 40 * MBIT, None)
        assert own[1] == (4 * MBIT, 40 * MBIT, group[0])      # the agent's own leaf
        assert fetch == (10 * MBIT, 10 * MBIT, group[0])
        assert wide == (40 * MBIT, 40 * MBIT, group[0])       # a call never above its agent
    e = s.egress.entries
    assert e[app.fs.cgroup_id(a.cgroup)]["classid"] & 0xFFFF == 2       # packets go to the leaf
    assert e[t.cgroup_id]["classid"] & 0xFFFF == 3 and e[t.cgroup_id]["rate_bps"] == 0
    s.on_tool_end(a, t, None)
    assert 3 in s.devices[0].classes                 # lingers, as in fq mode
    after_linger(s)
    s.on_tool_start(a, tool(a, "0003-normal", "normal"))
    assert 3 not in s.devices[0].classes
    s.on_agent_end(a)
    after_linger(s)
    s.on_sample(None)
    assert s.devices[0].classes == {} and e == {}
    s.on_agent_start(agent(name="b"))              # minors are reused
    assert len(s.devices[0].classes) == 2 and max(s.devices[0].classes) <= 4


def test_close_releases_every_device_and_the_program():
    s, _ = stage()
    s.close()
    assert s.egress is None and s.devices == []


def test_a_device_agentd_may_not_take_stops_the_stage_and_releases_the_others():
    policy = load_policy_text(POLICY % "auto", host_memory_bytes=8 << 30)
    app = types.SimpleNamespace(policy=policy, fs=FS(), root="agentd")
    made = []

    def device(name, mode=None):
        if name == "eth8":
            raise KernelError("network device eth8 has a root qdisc htb 7: that agentd did not set")
        made.append(FakeDevice(name, mode=mode))
        return made[-1]
    eg = FakeEgress()
    with pytest.raises(KernelError, match="did not set"):
        EgressStage(app, egress=eg, device=device)
    assert made[0].released and eg.closed


def test_a_dry_run_sets_no_qdisc_and_loads_no_program():
    from agentd.errors import FeatureMissing
    policy = load_policy_text(POLICY % "auto", host_memory_bytes=8 << 30)
    app = types.SimpleNamespace(policy=policy, fs=FS(), root="agentd", dry_run=True)
    with pytest.raises(FeatureMissing, match="dry run: no qdisc set on eth9, eth8"):
        build(app)


def nft_stage(mode, program=no_program, leaf_kind="fq_codel"):
    policy = load_policy_text(POLICY % mode, host_memory_bytes=8 << 30)
    app = types.SimpleNamespace(policy=policy, fs=FS(), root="agentd")
    asked = []

    def device(name, mode=None):
        asked.append(mode)
        return FakeDevice(name, mode=mode, kernel_has_fq=True, leaf_kind=leaf_kind)
    s = EgressStage(app, device=device, clock=Clock(), program=program, classifier=FakeClassifier)
    return s, app, asked


def test_auto_falls_back_to_nftables_and_htb_when_the_program_cannot_load(caplog):
    with caplog.at_level("WARNING", logger="agentd.network"):
        s, app, asked = nft_stage("auto")
    # htb even where the kernel has fq: without the program no packet gets a departure time.
    assert s.mode == "nft" and asked == ["htb", "htb"] and isinstance(s.egress, FakeClassifier)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "cannot load" in warned[0] and "nftables" in warned[0], warned
    assert "EPERM" in s.mode_details()["network"]["reason"]
    assert s.egress.devices == ["eth9", "eth8"]


def test_htb_mode_reports_its_classes_drops_and_overlimits_per_agent_and_keeps_an_ended_calls():
    s, app = stage(kernel_has_fq=False)
    a, b = agent(), agent(name="b")
    s.on_agent_start(a)
    s.on_agent_start(b)
    t = tool(a, "0001-fetch", "fetch")
    s.on_tool_start(a, t)
    group, own = s.classes[a.cgroup]
    (call,) = s.classes[t.cgroup]
    eth9, eth8 = s.devices
    eth9.stats[group.minor] = {"drops": 0, "overlimits": 4}        # the agent's ceiling held it back
    eth9.stats[own.minor] = {"drops": 1, "overlimits": 2}
    eth9.stats[call.minor] = {"drops": 5, "overlimits": 7}
    eth8.stats[call.minor] = {"drops": 10, "overlimits": 20}       # summed over the devices
    per = s.metric_stats()["network_egress"]
    assert (per["a"]["drops"], per["a"]["overlimits"]) == (16, 33)
    assert (per["b"]["drops"], per["b"]["overlimits"]) == (0, 0)    # b's classes are its own
    # The call's class goes after its linger: what it counted stays in its agent's counters.
    s.on_tool_end(a, t, None)
    after_linger(s)
    s.on_sample(None)
    assert call.minor not in eth9.classes
    per = s.metric_stats()["network_egress"]
    assert (per["a"]["drops"], per["a"]["overlimits"]) == (16, 33)
    eth9.stats[own.minor] = {"drops": 2, "overlimits": 2}
    assert s.metric_stats()["network_egress"]["a"]["drops"] == 17


def test_fq_mode_reads_no_class_stats():
    s, app = stage()
    a = agent()
    s.on_agent_start(a)
    s.devices[0].class_stats = lambda: pytest.fail("fq mode has no htb classes")
    assert s.metric_stats()["network_egress"]["a"]["overlimits"] == 0


def test_a_device_whose_stats_cannot_be_read_leaves_the_others_counted():
    s, app = stage(kernel_has_fq=False)
    a = agent()
    s.on_agent_start(a)
    group, own = s.classes[a.cgroup]
    s.devices[1].stats[own.minor] = {"drops": 3, "overlimits": 1}

    def gone():
        raise KernelError("reading htb class stats on eth9: No such device (errno 19)")
    s.devices[0].class_stats = gone
    assert s.metric_stats()["network_egress"]["a"]["drops"] == 3


def test_nft_mode_gives_each_limited_cgroup_a_rule_at_its_level_and_a_leaf_class():
    ran = []
    s, app, _ = nft_stage("nft", program=lambda *a: ran.append(a))
    assert ran == [] and s.mode == "nft"            # the policy asks nft: no program is loaded
    a = agent()
    s.on_agent_start(a)
    t = tool(a, "0001-fetch", "fetch")
    s.on_tool_start(a, t)
    rules = s.egress.rules
    agent_id = app.fs.cgroup_id(a.cgroup)
    assert rules[agent_id] == (3, (0xA9E0 << 16) | 2)         # agentd/agents/a: level 3, its own leaf
    assert rules[t.cgroup_id] == (5, (0xA9E0 << 16) | 3)      # .../tools/0001-fetch: level 5
    for d in s.devices:
        assert d.leaves == {2, 3}                   # the group (1) holds no packets itself
    assert s.mode_details()["network"]["leaf_qdisc"] == "fq_codel"
    assert s.metric_stats()["network_egress"]["a"] == {"bytes": 2000, "packets": 2, "delayed": 0, "drops": 0,
                                                       "overlimits": 0}
    s.on_tool_end(a, t, None)
    after_linger(s)
    s.on_sample(None)
    assert t.cgroup_id not in rules and 3 not in s.devices[0].classes
    # What the ended call sent stays in its agent's counters.
    assert s.metric_stats()["network_egress"]["a"]["bytes"] == 2000
    s.on_agent_end(a)
    after_linger(s)
    s.on_sample(None)
    assert rules == {} and s.devices[0].classes == {}
    s.close()
    assert s.egress is None


def test_a_kernel_without_fq_codel_or_sfq_is_one_warning(caplog):
    s, app, _ = nft_stage("nft", leaf_kind=None)
    with caplog.at_level("WARNING", logger="agentd.network"):
        for name in ("a", "b"):
            a = agent(name=name)
            s.on_agent_start(a)
            s.on_tool_start(a, tool(a, f"0001-{name}", "fetch"))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "fq_codel" in warned[0] and "pfifo" in warned[0], warned
    assert s.mode_details()["network"]["leaf_qdisc"] == "pfifo"


def test_a_mode_that_needs_the_program_says_so_when_it_cannot_load():
    from agentd.errors import FeatureMissing
    with pytest.raises(FeatureMissing, match="network.mode htb needs it"):
        nft_stage("htb")


def test_neither_bpf_nor_nftables_stops_the_stage_and_releases_the_devices():
    from agentd.errors import FeatureMissing
    policy = load_policy_text(POLICY % "auto", host_memory_bytes=8 << 30)
    app = types.SimpleNamespace(policy=policy, fs=FS(), root="agentd")
    made = []

    def device(name, mode=None):
        made.append(FakeDevice(name, mode=mode))
        return made[-1]

    def classifier(devices):
        raise KernelError("nftables: creating table inet agentd: No such file or directory (errno 2)")
    with pytest.raises(FeatureMissing, match="cannot load .* and nftables cannot stand in"):
        EgressStage(app, device=device, program=no_program, classifier=classifier)
    assert made and all(d.released for d in made)
