"""The world a resource stage's unit tests run in, built the way the daemon wires it: a
policy loaded from text, a fake cgroup tree, and a Controller over them (set up, with its
actuator; no stage yet: the test builds its stage and puts it in ctl.hooks)."""

import types

from agentd.controller import Controller
from agentd.enforce.actuator import Actuator
from agentd.eventlog import EventLog
from agentd.kernel.fakes import FakeCgroupFS
from agentd.policy.loader import load_policy_text
from agentd.policy.planner import Planner
from agentd.state import StateStore

HOST_MEMORY = 16 << 30


def load(text, **kw):
    """`text` loaded as the policy file t.yaml on a host of HOST_MEMORY."""
    return load_policy_text(text, "t.yaml", host_memory_bytes=HOST_MEMORY, **kw)


def controller(tmp_path, policy, fs=None, dry_run=False):
    """A Controller with `policy` over `fs` (default: a fresh fake tree in tmp_path/cg)."""
    fs = fs if fs is not None else FakeCgroupFS(str(tmp_path / "cg"))
    events = EventLog(str(tmp_path / "ev.jsonl"))
    procfs = types.SimpleNamespace(set_oom_score_adj=lambda p, v: None)
    ctl = Controller(fs, "agentd", None, Planner(policy, HOST_MEMORY), StateStore(str(tmp_path / "st")), events,
                     procfs, actuator=Actuator(fs, events, dry_run=dry_run, procfs=procfs))
    ctl.setup()
    return ctl
