"""A resize of the memory agentd manages (a slice's or a container's memory.max above its
root) reaches what already runs: agents' percentage limits, and the forecaster's size."""

from agentd.controller import Controller
from agentd.daemon import App, Config
from agentd.enforce.forecasting import Forecasting
from agentd.eventlog import EventLog
from agentd.monitor.hostmem import HostMemory
from agentd.kernel.fakes import FakeCgroupFS
from agentd.policy.planner import Planner
from agentd.policy.loader import load_policy
from agentd.state import StateStore

MiB = 1 << 20
GiB = 1 << 30

POLICY = """\
version: 1
defaults: {agent_class: half}
agent_classes:
  half: {priority: 500, memory: {high: 40%, max: 50%}, cpu: {weight: 200}, pids: {max: 500}}
  fixed: {priority: 500, memory: {max: 1Gi}}
"""


class SizeHook:
    def __init__(self):
        self.sizes = []

    def on_memory_size(self, total):
        self.sizes.append(total)


def _app(tmp_path, budget):
    """The daemon's objects over a fake cgroupfs whose slice/memory.max is the budget."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    app = App(Config(policy=str(tmp_path / "policy.yaml")))
    app.fs = fs = FakeCgroupFS(str(tmp_path / "cg"))
    app.root = "slice/agentd"
    fs.makedirs(app.root)
    fs.write("slice", "memory.max", str(budget))
    app.memory = HostMemory(fs, app.root, host_fn=lambda: (64 * GiB, 60 * GiB))
    app.host_memory = app.memory.total
    app.policy = load_policy(app.cfg.policy, host_memory_bytes=app.host_memory)
    app.events = EventLog(str(tmp_path / "ev.jsonl"))
    app.ctl = Controller(fs, app.root, None, Planner(app.policy, app.host_memory), StateStore(str(tmp_path / "st")),
                         app.events, procfs=None)
    app.ctl.hooks = app.hooks
    app.ctl.setup()
    return app


def test_running_agents_percentage_limits_follow_a_resize(tmp_path):
    app = _app(tmp_path, 1 * GiB)
    hook = SizeHook()
    app.hooks.append(hook)
    fs = app.fs
    half = app.ctl.create_agent("h")
    fixed = app.ctl.create_agent("f", "fixed")
    assert fs.read(half.cgroup, "memory.max") == str(512 * MiB)
    fs.write(half.cgroup, "cpu.weight", "900")          # the CPU stage's, not the class's to keep

    fs.write("slice", "memory.max", str(4 * GiB))       # the slice grows
    app._follow_memory_size()

    assert app.host_memory == 4 * GiB
    assert fs.read(half.cgroup, "memory.max") == str(2 * GiB)
    assert fs.read(half.cgroup, "memory.high") == str(int(0.4 * 4 * GiB))
    assert half.limits_applied["memory.max"] == str(2 * GiB)           # what status shows
    assert fs.read(half.cgroup, "cpu.weight") == "900"
    assert fs.read(fixed.cgroup, "memory.max") == str(GiB)             # not a percentage
    assert hook.sizes == [4 * GiB]
    # An agent started after the resize gets the same limits as one that ran through it.
    assert fs.read(app.ctl.create_agent("n").cgroup, "memory.max") == str(2 * GiB)

    fs.write("slice", "memory.max", str(GiB))           # and shrinks again
    app._follow_memory_size()
    assert fs.read(half.cgroup, "memory.max") == str(512 * MiB)
    assert hook.sizes == [4 * GiB, GiB]

    app._follow_memory_size()                           # no change: nothing written
    assert hook.sizes == [4 * GiB, GiB]


def test_an_agent_whose_class_left_the_policy_keeps_its_limits(tmp_path):
    app = _app(tmp_path, 1 * GiB)
    a = app.ctl.create_agent("h")
    (tmp_path / "policy.yaml").write_text(POLICY.replace("  half:", "  halved:").replace("agent_class: half",
                                                                                         "agent_class: halved"))
    app.fs.write("slice", "memory.max", str(4 * GiB))
    app._follow_memory_size()
    assert app.fs.read(a.cgroup, "memory.max") == str(512 * MiB)


def test_the_forecaster_forecasts_no_more_than_the_new_size(tmp_path):
    policy = load_policy("default", host_memory_bytes=64 * GiB)
    fc = Forecasting(policy, None, 64 * GiB)
    assert fc.forecaster.host_budget == 64 * GiB
    fc.resize(256 * MiB)
    assert fc.forecast(["bash", "-c", "make -j"], "batch", "a", "normal").peak_bytes <= 256 * MiB
    fc.resize(None)                                     # unknown: keep the last size
    assert fc.forecaster.host_budget == 256 * MiB
