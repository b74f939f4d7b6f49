"""agentd as a systemd service, as a new user installs and runs it, in one boot of a real
kernel (sched_ext, full cgroup v2) with systemd as PID 1. The tests run in file order and
share the one installed service: each step starts from where the previous one left it."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from .support import (AGENTD, REPO, SLOW, UNIT, agent_ids, alive, cgroup_of, journal, main_pid, running,
                      sh, show, status, stop_sessions, systemd_version, wait_for)

pytestmark = pytest.mark.systemd

CG = "/sys/fs/cgroup"
METRICS = "http://127.0.0.1:9464/metrics"
SESSIONS = []          # background `agentd run`s, stopped at the end


def teardown_module():
    stop_sessions(SESSIONS)


def agents_root():
    return status()["root"]


def procs(cg):
    with open(f"{CG}/{cg}/cgroup.procs") as f:
        return [int(x) for x in f.read().split()]


def start_session(name, script):
    """`agentd run` from a login session (pam_systemd puts `runuser -l` in user-0.slice)."""
    mark = f"/tmp/agentd-session-{name}.cgroup"
    p = subprocess.Popen(
        ["runuser", "-l", "root", "-c",
         f"cat /proc/self/cgroup > {mark}; exec {AGENTD} run --user root --name {name} -- bash -c {script!r}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/agentd-session-{name}.log", "w"),
        start_new_session=True)
    SESSIONS.append(p)
    wait_for(lambda: name in (agent_ids() or []), SLOW, f"agent {name} listed by the daemon")
    with open(mark) as f:
        session_cg = f.read()
    return p, session_cg


def agent(name):
    for a in status()["agents"]:
        if a["agent"] == name:
            return a
    return None


def test_setup_script_installs_a_package_and_enable_now_reaches_running():
    # The README's setup, then its one systemd command. The tier hands setup.sh a wheel built
    # from this tree on the host (AGENTD_WHEEL): the guest has no network to build one.
    assert os.environ.get("AGENTD_WHEEL"), "run through tests/systemd/run.py"
    sh(f"bash {REPO}/.ci/setup.sh", timeout=900)
    # The service runs the installed package, not this checkout.
    where = sh("cd / && python3 -c 'import agentd; print(agentd.__file__)'").stdout.strip()
    assert not where.startswith(REPO + "/") and "site-packages" in where, where
    assert os.access(AGENTD, os.X_OK)
    sh("systemctl enable --now agentd", timeout=SLOW)
    s = show("ActiveState", "SubState", "Type", "StatusText", "NRestarts", "ExecMainStatus")
    # Type=notify: `enable --now` returned once READY=1 arrived, and the status line is the daemon's.
    assert (s["ActiveState"], s["SubState"], s["Type"]) == ("active", "running", "notify"), s
    assert s["StatusText"].startswith("serving"), s
    assert s["NRestarts"] == "0", s


def test_daemon_sits_where_systemd_can_start_the_next_one():
    pid = main_pid()
    own = cgroup_of(pid)
    unit_cg = "/system.slice/agentd.service"
    root = agents_root()
    if systemd_version() >= 254:
        # DelegateSubgroup=daemon: systemd itself starts the daemon in the unit's leaf.
        assert own == unit_cg + "/daemon" and root == unit_cg.strip("/"), (own, root)
    else:
        # systemd 252 starts the main process in the unit's cgroup: that cgroup must never
        # enable controllers (or the next start fails with 219/CGROUP), so agents live in
        # the top-level cgroup agentd.
        assert own == unit_cg and root == "agentd", (own, root)
        with open(f"{CG}{unit_cg}/cgroup.subtree_control") as f:
            assert f.read().strip() == ""
    with open(f"{CG}/{root}/cgroup.subtree_control") as f:
        assert {"memory", "cpu", "pids"} <= set(f.read().split())
    assert show("Delegate")["Delegate"] == "yes"
    assert show("TasksMax")["TasksMax"] == "infinity"


def test_bpf_programs_and_sched_ext_load_under_the_units_hardening():
    snap = status()
    assert snap["modes"].get("cpu") == "sched_ext", snap["modes"]
    with open("/sys/kernel/sched_ext/state") as f:
        assert f.read().strip() == "enabled"
    with open("/sys/kernel/sched_ext/root/ops") as f:
        assert f.read().strip() == "agentd"
    assert snap["modes"].get("pressure") == "psi-trigger", snap["modes"]
    metrics = urllib.request.urlopen(METRICS, timeout=30).read().decode()
    for prog in ("lifecycle", "memwatch"):
        assert f'agentd_bpf_programs_loaded{{program="{prog}"}} 1.0' in metrics, prog
    # The programs the daemon holds (through program, link and struct_ops descriptors),
    # loaded from inside the hardened service: lifecycle, memwatch and the scheduler's
    # callbacks, 15 on this kernel when the unit took nothing away.
    ids = set()
    fdinfo = f"/proc/{main_pid()}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{fd}") as f:
                ids.update(line.split()[1] for line in f if line.startswith("prog_id:"))
        except OSError:
            pass
    assert len(ids) >= 10, sorted(ids)
    # The journal holds the daemon's lines (so the absence of warnings below means something).
    assert "serving on" in journal("-o", "cat")
    warned = journal("-p", "warning", "-o", "cat")
    assert "BPF" not in warned and "sched_ext" not in warned, warned


def test_cap_sys_resource_is_kept():
    with open(f"/proc/{main_pid()}/status") as f:
        capeff = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    assert capeff >> 24 & 1, f"CapEff {capeff:x} lacks CAP_SYS_RESOURCE"
    assert status()["capabilities"].get("sys_resource") is True


def test_doctor_reports_every_feature_at_its_best():
    out = json.loads(sh(f"{AGENTD} doctor --json").stdout)
    caps, modes = out["capabilities"], out["modes"]
    assert caps["sched_ext"] and caps["sys_resource"], caps
    assert {"memory", "cpu", "pids"} <= set(caps["controllers"]), caps
    assert modes["cpu"]["mode"] == "sched_ext", modes
    assert modes["memory_limits"]["mode"] == "enforced", modes
    assert modes["monitoring"]["mode"] == "bpf", modes
    assert out["daemon"]["running"], out["daemon"]
    # systemd mounts /sys/fs/cgroup itself, without favordynmods (cheaper process moves):
    # the one note an administrator may act on; every kernel feature is there.
    assert [w for w in out["warnings"] if "favordynmods" not in w] == [], out["warnings"]


def test_agent_from_a_login_session_lands_in_agentds_tree_and_stays_after_daemon_reload():
    _, session_cg = start_session("sess", "sleep 3000")
    assert "/user.slice/" in session_cg, f"runuser -l gave no login session: {session_cg}"
    a = agent("sess")
    pids = procs(a["main_cgroup"])
    assert pids and a["main_cgroup"].startswith(agents_root() + "/agents/"), a
    sh("systemctl daemon-reload")
    time.sleep(3)
    # systemd neither moved the agent back into its session scope nor stopped it.
    assert procs(a["main_cgroup"]) == pids and all(alive(p) for p in pids)
    assert "sess" in agent_ids()


def test_restart_with_agents_and_tool_calls_running_loses_none():
    start_session("tools", f"{AGENTD} tool -- sleep 3000")
    wait_for(lambda: agent("tools")["tools"], SLOW, "the agent's tool call listed")
    before = {a["agent"]: (a["main_cgroup"], [t["tool"] for t in a["tools"]]) for a in status()["agents"]}
    tool_cg = f'{agent("tools")["cgroup"]}/tools/{agent("tools")["tools"][0]["tool"]}'
    tool_pids = procs(tool_cg)
    old = main_pid()
    # Before DelegateSubgroup=/the top-level layout, this failed: 219/CGROUP, restarted in a loop.
    sh("systemctl restart agentd", timeout=SLOW)
    assert running(other_than=old)
    assert show("ExecMainStatus")["ExecMainStatus"] == "0"
    after = wait_for(lambda: {a["agent"]: (a["main_cgroup"], [t["tool"] for t in a["tools"]])
                              for a in status()["agents"]} == before and status(), SLOW, "agents re-adopted")
    assert after
    assert procs(tool_cg) == tool_pids and all(alive(p) for p in tool_pids)


def test_stop_leaves_agents_running_and_start_adopts_them():
    a = agent("sess")
    pids = procs(a["main_cgroup"])
    sh("systemctl stop agentd", timeout=SLOW)
    assert show("ActiveState")["ActiveState"] == "inactive"
    assert all(alive(p) for p in pids), "KillMode=process must leave agents running"
    sh("systemctl start agentd", timeout=SLOW)
    wait_for(lambda: {"sess", "tools"} <= set(agent_ids() or []), SLOW, "agents adopted after start")
    assert procs(a["main_cgroup"]) == pids


def test_watchdog_restarts_a_stalled_daemon_and_its_scheduler_comes_back():
    n0 = int(show("NRestarts")["NRestarts"])
    old = main_pid()
    since = sh("date +%s").stdout.strip()
    os.kill(old, signal.SIGSTOP)     # the main loop stops pinging WATCHDOG=1
    # WatchdogSec=30 after the last ping, then SIGABRT, which systemd follows with SIGCONT so
    # that a stopped process receives it; SIGKILL after TimeoutAbortSec (20) if it did not die.
    wait_for(lambda: running(other_than=old), 30 + 20 + 2 + SLOW, "a new daemon after the watchdog fired")
    assert int(show("NRestarts")["NRestarts"]) == n0 + 1
    assert "watchdog timeout" in sh("journalctl --no-pager -u agentd -o cat --since @" + since).stdout.lower()
    # The dead daemon's scheduler went with it (a BPF link), so the new one loads its own.
    wait_for(lambda: (status() or {}).get("modes", {}).get("cpu") == "sched_ext", SLOW,
             "the restarted daemon's sched_ext scheduler")
    assert "already loaded" not in sh("journalctl --no-pager -u agentd -o cat --since @" + since).stdout
    assert {"sess", "tools"} <= set(agent_ids())


def test_prometheus_scrapes_the_daemon(tmp_path):
    conf = tmp_path / "prometheus.yml"
    conf.write_text("global: {scrape_interval: 2s}\nscrape_configs:\n"
                    "  - job_name: agentd\n    static_configs: [{targets: ['127.0.0.1:9464']}]\n")
    sh(f"systemd-run --unit agentd-test-prometheus --collect -p PrivateTmp=no /usr/bin/prometheus "
       f"--config.file={conf} --storage.tsdb.path={tmp_path}/tsdb --web.listen-address=127.0.0.1:9090")
    try:
        def query(q):
            try:
                url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.request.quote(q)
                return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
            except OSError:
                return None
        up = wait_for(lambda: query('up{job="agentd"} == 1'), SLOW, "Prometheus scraping agentd")
        assert up
        agents = wait_for(lambda: query("agentd_agents_running"), 60, "an agentd metric in Prometheus")
        assert float(agents[0]["value"][1]) >= 2
        mode = query('agentd_mode_info{component="cpu"}')
        assert mode and mode[0]["metric"]["mode"] == "sched_ext", mode
    finally:
        sh("systemctl stop agentd-test-prometheus", check=False)


def test_journal_files_agentds_lines_under_their_priorities():
    # An administrator's typo in the policy: `systemctl reload` keeps the old one and says so
    # as an error; journald files each line under the priority the daemon gave it.
    path = "/etc/agentd/policies/default.yaml"
    with open(path) as f:
        good = f.read()
    since = sh("date +%s").stdout.strip()
    try:
        with open(path, "w") as f:
            f.write(good + "\nthis_is_not_a_policy_key: [\n")
        sh("systemctl reload agentd")
        wait_for(lambda: "reload failed" in journal("-o", "cat", "--since", "@" + since), SLOW,
                 "the failed reload in the journal")
    finally:
        with open(path, "w") as f:
            f.write(good)
    sh("systemctl reload agentd")
    assert running()
    entries = [json.loads(line) for line in journal("-o", "json", "--since", "@" + since).splitlines() if line]
    failed = [e for e in entries if "reload failed" in str(e.get("MESSAGE"))]
    assert failed and all(e["PRIORITY"] == "3" for e in failed), failed
    assert journal("-p", "err", "-o", "cat", "--since", "@" + since).count("reload failed") == len(failed)
    every = [json.loads(line) for line in journal("-o", "json").splitlines() if line]
    by_level = {}
    for e in every:
        level = str(e.get("MESSAGE", "")).split(" ", 1)[0]
        if level in ("INFO", "WARNING", "ERROR"):
            by_level.setdefault(level, set()).add(e["PRIORITY"])
    assert by_level.get("INFO") == {"6"}, by_level
    assert by_level.get("WARNING", {"4"}) == {"4"} and by_level["ERROR"] == {"3"}, by_level


def test_set_property_memory_max_on_the_unit():
    """`systemctl set-property agentd MemoryMax=` sizes what the unit's cgroup holds: with
    DelegateSubgroup (systemd >= 254) every agent, and agentd re-sizes its plans to it; on
    systemd 252 only the daemon itself (agents live outside the unit)."""
    sh("systemctl set-property --runtime agentd MemoryMax=768M")
    try:
        with open(f"{CG}/system.slice/agentd.service/memory.max") as f:
            assert int(f.read()) == 768 << 20
        root = agents_root()
        if systemd_version() >= 254:
            wait_for(lambda: "768" in journal("-o", "cat", "-n", "50"), 60, "agentd noticing its new size")
        else:
            with open(f"{CG}/{root}/memory.max") as f:
                assert f.read().strip() == "max"
        assert running()
        sh("systemctl daemon-reload")
        assert {"sess", "tools"} <= set(agent_ids())
    finally:
        sh("systemctl set-property --runtime agentd MemoryMax=infinity", check=False)


def test_egress_limits_apply_under_the_units_hardening():
    """A policy naming an egress device: under the unit's capability set the daemon puts its
    own root qdisc on the device (tc and nftables need CAP_NET_ADMIN) and says which mode
    runs; with the device out of the policy again the device gets the kernel's default back."""
    path = "/etc/agentd/policies/default.yaml"
    dev = "agdnet0"
    with open(path) as f:
        good = f.read()
    assert "\nnetwork:" not in good, "the shipped default policy names egress devices: pick another test device"
    sh(f"ip link add {dev} type dummy && ip link set {dev} up")
    before = sh(f"tc qdisc show dev {dev} root").stdout.split()[:2]
    try:
        since = sh("date +%s").stdout.strip()
        with open(path, "w") as f:
            f.write(good + f"\nnetwork: {{devices: [{dev}]}}\n")
        sh("systemctl restart agentd")
        wait_for(lambda: (status() or {}).get("modes", {}).get("network"), SLOW, "the network stage's mode")
        assert status()["modes"]["network"] == "fq", (status()["modes"], journal("-o", "cat", "--since", "@" + since))
        assert sh(f"tc qdisc show dev {dev} root").stdout.split()[:2] == ["qdisc", "fq"]
        assert "CAP_NET_ADMIN" not in journal("-o", "cat", "--since", "@" + since)
    finally:
        with open(path, "w") as f:
            f.write(good)
        sh("systemctl restart agentd", check=False)
    wait_for(running, SLOW, "agentd running again")
    assert sh(f"tc qdisc show dev {dev} root").stdout.split()[:2] == before
    sh(f"ip link del {dev}")
