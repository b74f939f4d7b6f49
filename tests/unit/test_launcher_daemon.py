"""The C launcher with the real daemon on the host's cgroup v2 tree (root needed).

tests/host runs the same paths through whichever `agentd` front is built; these
tests always build and use the C launcher, so its placement, environment and
reporting are checked against the real daemon even where the in-tree one is absent.
"""

import itertools
import json
import os
import subprocess
import sys

import pytest

from agentd._build import build_launcher
from tests.helpers import REPO, DaemonProc, kill_tree

pytestmark = pytest.mark.host
_seq = itertools.count()

FORK_STORM = r'''
for i in $(seq 50); do ( grep ^0:: /proc/self/cgroup > "$1.$i"; sleep 0.2 ) & done
wait
exit 3
'''


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    return str(build_launcher(out=tmp_path_factory.mktemp("launcher") / "agentd", extra_cflags=("-Werror",)))


@pytest.fixture
def daemon(tmp_path):
    from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount
    mount = find_cgroup2_mount()
    if os.geteuid() != 0 or not mount:
        pytest.fail("these tests need root and a cgroup v2 hierarchy (see README: Tests)")
    fs = CgroupFS(mount)
    root = f"agentd-test-{os.getpid()}-l{next(_seq)}"
    d = DaemonProc(str(tmp_path), root).start()
    yield d
    d.cleanup()
    kill_tree(fs, root)
    assert not fs.exists(root), f"test cgroup {root} left behind"


def run_agent(daemon, name, script, *args, env=None):
    """`agentd run` (the Python CLI) of a bash script as agent `name`."""
    cmd = [sys.executable, "-m", "agentd", "run", "--name", name, "--", "bash", "-c", script, name, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(daemon.env, **(env or {})))


def test_fork_storm_is_placed_before_cmd_starts(daemon, launcher, tmp_path):
    out = str(tmp_path / "cg")
    r = run_agent(daemon, "lstorm", '"$1" tool --class build -- bash -c "$2" storm "$3"', launcher, FORK_STORM, out)
    assert r.returncode == 3, r.stderr
    end = daemon.wait_event(lambda e: e.get("event") == "tool_end" and e.get("agent") == "lstorm")
    want = f"0::/{daemon.root}/agents/lstorm/tools/{end['tool']}"
    seen = [open(f"{out}.{i}").read().strip() for i in range(1, 51)]
    assert seen.count(want) == 50, set(seen)
    assert end["status"] == {"exit": 3} and end["argv"][:2] == ["bash", "-c"]


def test_env_status_and_feedback_from_the_real_daemon(daemon, launcher, tmp_path):
    fb = tmp_path / "feedback.jsonl"
    script = '"$1" tool -- sh -c \'echo "tool=$AGENTD_TOOL"; kill -TERM $$\'; echo "rc=$?"'
    r = run_agent(daemon, "lenv", script, launcher, env={"AGENTD_FEEDBACK_FILE": str(fb)})
    assert r.returncode == 0, r.stderr
    end = daemon.wait_event(lambda e: e.get("event") == "tool_end" and e.get("agent") == "lenv")
    assert r.stdout.splitlines() == [f"tool=lenv/{end['tool']}", "rc=143"]
    assert end["status"] == {"signal": 15}
    (result,) = [json.loads(line) for line in fb.read_text().splitlines()]
    assert result["tool"] == end["tool"] and result["status"] == {"signal": 15}


def test_outside_an_agent_is_refused_with_125(daemon, launcher, tmp_path):
    marker = tmp_path / "ran"
    r = subprocess.run([launcher, "tool", "--", "touch", str(marker)], capture_output=True, text=True,
                       env=daemon.env, timeout=30)
    assert r.returncode == 125 and r.stderr.startswith("agentd: ") and "agent" in r.stderr
    assert not marker.exists()
