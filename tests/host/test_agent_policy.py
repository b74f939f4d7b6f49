"""`agentd run --policy P` against a running daemon: P is the agent's own policy, applied
within the daemon's (tighter classes, its own rules), or refused with every problem and
nothing started."""

import os
import subprocess

from tests.helpers import REPO, DaemonProc, agentd_cmd

DAEMON = """\
version: 1
agent_classes:
  normal: {priority: 50, pids: {max: 4096}}
tool_classes:
  normal: {priority: 50}
  batch: {priority: 20, latency: batch, pids: {max: 512}, stragglers: wait}
tool_rules:
  - {name: builds, match: {program: [make]}, class: batch}
detection:
  enabled: false
"""

MINE = """\
version: 1
agent_classes:
  normal: {priority: 30, pids: {max: 1024}}
tool_classes:
  batch: {pids: {max: 64}, stragglers: kill}
tool_rules:
  - {name: mine, match: {program: [sleep]}, class: batch}
"""

GREEDY = """\
version: 1
agent_classes:
  normal: {pids: {max: 100000}}
  vip: {priority: 900}
admission: {enabled: false}
"""


def alive(pid):
    """Running (a killed process may linger as a zombie until whoever inherited it reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start(tmp_path, test_root):
    policy = tmp_path / "daemon.yaml"
    policy.write_text(DAEMON)
    return DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()


def run(d, policy, script):
    return subprocess.run(agentd_cmd() + ["run", "--name", "own", "--policy", str(policy), "--", "bash", "-c",
                                          script, "agent", *agentd_cmd()],
                          capture_output=True, text=True, timeout=60, env=d.env, cwd=REPO)


def test_an_agents_own_tighter_policy_applies_to_it(tmp_path, test_root, cgfs):
    d = start(tmp_path, test_root)
    out = tmp_path / "out"
    out.mkdir()
    straggler = None
    try:
        mine = tmp_path / "mine.yaml"
        mine.write_text(MINE)
        # A batch call that leaves a background sleep behind: the daemon's batch class waits
        # for stragglers, this agent's tightened one kills them.
        r = run(d, mine, f'"$@" status --json > {out}/status.json; '
                         f'"$@" tool -- sh -c "sleep 30 & echo \\$! > {out}/straggler"; '
                         '"$@" tool -- make --version > /dev/null; true')
        assert r.returncode == 0, r.stderr
        straggler = int((out / "straggler").read_text())
        import json
        me = next(a for a in json.loads((out / "status.json").read_text())["agents"] if a["agent"] == "own")
        assert me["priority"] == 30 and me["agent_class"] == "normal"        # the daemon's says 50
        ends = {e["argv"][0]: e for e in d.events() if e["event"] == "tool_end" and e["agent"] == "own"}
        # Its own rule, onto the daemon's batch class as its policy tightened it.
        assert (ends["sh"]["tool_class"], ends["sh"]["rule"]) == ("batch", "mine"), ends["sh"]
        assert ends["sh"]["stragglers"] == 1 and ends["sh"]["cgroup_removed"] is True, ends["sh"]
        assert not alive(straggler), "the straggler was left running (stragglers: wait)"
        # The daemon's rules are not this agent's: make falls to the default class.
        assert (ends["make"]["tool_class"], ends["make"]["rule"]) == ("normal", None)
    finally:
        if straggler and alive(straggler):
            os.kill(straggler, 9)
        d.cleanup()


def test_a_policy_asking_for_more_than_the_daemons_is_refused(tmp_path, test_root, cgfs):
    d = start(tmp_path, test_root)
    try:
        greedy = tmp_path / "greedy.yaml"
        greedy.write_text(GREEDY)
        marker = tmp_path / "ran"
        r = run(d, greedy, f"touch {marker}")
        assert r.returncode == 125
        src = str(tmp_path / "daemon.yaml")
        assert r.stderr == (
            f"agentd: policy {greedy} does not fit under the running daemon's policy {src}; nothing was started:\n"
            f"{greedy}:3: agent_classes.normal.pids.max: 100000 is above the daemon's 4096 for agent class 'normal': "
            f"an agent's policy may only tighten the daemon's ({src})\n"
            f"{greedy}:4: agent_classes.vip: agent class 'vip' is not defined by the running daemon's policy {src} "
            "(defined: normal); an agent's policy may only tighten the daemon's classes\n"
            f"{greedy}:5: admission: admission is host-wide: the running daemon's policy {src} sets it for every "
            "agent; remove this section (or start the daemon with this policy)\n")
        assert not marker.exists()
        assert not any(e["event"] == "agent_start" for e in d.events())
        assert cgfs.children(f"{test_root}/agents") == []
    finally:
        d.cleanup()


def test_a_reload_that_no_longer_allows_an_agents_policy_puts_it_under_the_daemons(tmp_path, test_root, cgfs):
    d = start(tmp_path, test_root)
    out = tmp_path / "out"
    out.mkdir()
    try:
        mine = tmp_path / "mine.yaml"
        mine.write_text(MINE)
        gate = out / "go"
        p = subprocess.Popen(agentd_cmd() + ["run", "--name", "own", "--policy", str(mine), "--", "bash", "-c",
                                             f'while [ ! -e {gate} ]; do sleep 0.05; done; '
                                             '"$@" tool -- sleep 0.1', "agent", *agentd_cmd()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env, cwd=REPO)
        try:
            d.wait_event(lambda e: e["event"] == "agent_start" and e["agent"] == "own")
            # The daemon's normal class now has priority 20: the agent's 30 asks for more.
            (tmp_path / "daemon.yaml").write_text(DAEMON.replace("normal: {priority: 50,", "normal: {priority: 20,"))
            assert d.request({"op": "reload"})["ok"]
            ev = d.wait_event(lambda e: e["event"] == "agent_policy" and e["agent"] == "own")
            assert ev["ok"] is False and "agent_classes.normal.priority: 30 is above the daemon's 20" in ev["error"]
            gate.touch()
            assert p.wait(30) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        end = d.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "own")
        # Under the daemon's policy now: its rules (no `mine` rule) and classes.
        assert (end["tool_class"], end["rule"]) == ("normal", None), end
    finally:
        d.cleanup()


def test_a_restarted_daemon_runs_the_agent_under_its_own_policy_again(tmp_path, test_root, cgfs):
    d = start(tmp_path, test_root)
    out = tmp_path / "out"
    out.mkdir()
    try:
        mine = tmp_path / "mine.yaml"
        mine.write_text(MINE)
        gate = out / "go"
        p = subprocess.Popen(agentd_cmd() + ["run", "--name", "own", "--policy", str(mine), "--", "bash", "-c",
                                             f'while [ ! -e {gate} ]; do sleep 0.05; done; '
                                             '"$@" tool -- sleep 0.1', "agent", *agentd_cmd()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env, cwd=REPO)
        try:
            d.wait_event(lambda e: e["event"] == "agent_start" and e["agent"] == "own")
            d.kill9()
            d.start()
            d.wait_event(lambda e: e["event"] == "agent_adopted" and e["agent"] == "own")
            gate.touch()
            assert p.wait(30) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        end = d.wait_event(lambda e: e["event"] == "tool_end" and e["agent"] == "own")
        assert (end["tool_class"], end["rule"]) == ("batch", "mine"), end
    finally:
        d.cleanup()
