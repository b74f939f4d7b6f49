"""The systemd unit (systemd-analyze verify, required settings) and `agentd install --root`."""

import os
import shutil
import subprocess
import types

import pytest

from agentd import sdnotify
from agentd.install import install, render_unit, unit_template

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, "..", "..", "systemd", "agentd.service")


def settings(text):
    """{(section, key): [values]} of a unit file (keys may repeat)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault((section, k), []).append(v)
    return out


def verify(path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze is missing: install Debian's `systemd` package")
    return subprocess.run([exe, "verify", path], capture_output=True, text=True)


@pytest.fixture
def rendered(tmp_path):
    front = tmp_path / "agentd"
    front.write_text("#!/bin/sh\nexit 0\n")
    front.chmod(0o755)
    unit = tmp_path / "agentd.service"
    unit.write_text(render_unit(str(front)))
    return unit


def test_unit_passes_systemd_analyze_verify(rendered):
    r = verify(str(rendered))
    # verify exits 0 on unknown keys and bad values: any message at all is a failure.
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout


def test_verify_catches_a_broken_unit(rendered):
    rendered.write_text(rendered.read_text().replace("WatchdogSec=30", "WatchdogSec=thirty"))
    r = verify(str(rendered))
    assert "sec value" in r.stderr and ":" in r.stderr, r.stderr


def test_unit_settings():
    with open(UNIT) as f:
        s = settings(f.read())
    one = {k: v[-1] for k, v in s.items()}
    assert one[("Service", "Type")] == "notify" and one[("Service", "NotifyAccess")] == "main"
    assert int(one[("Service", "WatchdogSec")]) > 0
    assert one[("Service", "Delegate")] == "yes" and one[("Service", "KillMode")] == "process"
    assert one[("Service", "ExecStart")] == "@AGENTD@ daemon"
    assert ("Service", "MemoryMin") in one and ("Service", "MemoryLow") in one
    # Hardening that would take away cgroupfs writes or bpf(2) must not be there.
    for key in ("ProtectControlGroups", "ProtectKernelTunables", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert one.get(("Service", key), "no") == "no", key
    assert "bpf" not in " ".join(s.get(("Service", "SystemCallFilter"), []))
    rw = " ".join(s[("Service", "ReadWritePaths")]).split()
    assert "/sys/fs/cgroup" in rw and "/sys/fs/bpf" in rw
    caps = one[("Service", "CapabilityBoundingSet")].split()
    assert {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_KILL", "CAP_SYS_RESOURCE", "CAP_SYS_NICE", "CAP_NET_ADMIN"} <= set(caps)
    assert one[("Service", "ProtectSystem")] in ("strict", "full")
    assert one[("Service", "NoNewPrivileges")] == "yes"


def test_install_into_a_staging_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc/agentd/policies").mkdir(parents=True)
    (root / "etc/agentd/policies/default.yaml").write_text("# the admin's own\n")
    said = []
    args = types.SimpleNamespace(prefix="/usr/local", no_systemd=False, root=str(root))
    assert install(args, out=said.append) == 0
    front = root / "usr/local/bin/agentd"
    assert front.exists() and os.access(front, os.X_OK)
    assert (root / "etc/agentd/policies/default.yaml").read_text() == "# the admin's own\n"
    shipped = sorted(p for p in os.listdir(os.path.join(HERE, "..", "..", "policies")) if p.endswith(".yaml"))
    assert sorted(os.listdir(root / "etc/agentd/policies")) == shipped
    assert (root / "var/lib/agentd").is_dir() and (root / "var/log/agentd").is_dir()
    unit = (root / "etc/systemd/system/agentd.service").read_text()
    assert "ExecStart=/usr/local/bin/agentd daemon" in unit and "@AGENTD@" not in unit
    assert not any("daemon-reload" in x for x in said)
    # Idempotent: a second run changes nothing that exists.
    assert install(args, out=said.append) == 0
    assert (root / "etc/systemd/system/agentd.service").read_text() == unit


def test_install_for_a_package_unit_dir_and_target_systemd(tmp_path):
    """What the Debian package stages: the unit in the distribution's folder, rendered
    for the systemd it names, not this host's."""
    for version, delegate in ((252, False), (255, True)):
        root = tmp_path / str(version)
        args = types.SimpleNamespace(prefix="/usr", no_systemd=False, root=str(root),
                                     unit_dir="/lib/systemd/system", systemd_version=version)
        assert install(args, out=lambda _: None) == 0
        unit = (root / "lib/systemd/system/agentd.service").read_text()
        assert "ExecStart=/usr/bin/agentd daemon" in unit
        assert ("DelegateSubgroup=daemon" in unit) is delegate
        assert not (root / "etc/systemd").exists()


def test_install_cli_renders_the_delegate_subgroup_layout_from_systemd_254(tmp_path):
    """`agentd install --systemd-version N` as typed: from 254 the written unit makes systemd
    start every daemon in the leaf agentd.placement reads as the delegate-subgroup layout
    (agents beside it in the unit's cgroup); before 254 the key is left out and the daemon
    starts in the unit's cgroup itself (agents in the top-level cgroup)."""
    from agentd.cli import build_parser
    from agentd.placement import DAEMON_LEAF, decide
    unit_cg = "/system.slice/agentd.service"
    for version, leaf in ((253, None), (254, DAEMON_LEAF), (257, DAEMON_LEAF)):
        root = tmp_path / str(version)
        args = build_parser().parse_args(["install", "--root", str(root), "--prefix", "/usr",
                                          "--systemd-version", str(version)])
        assert args.fn(args) == 0
        unit = settings((root / "etc/systemd/system/agentd.service").read_text())
        assert unit[("Service", "Delegate")] == ["yes"] and unit[("Service", "KillMode")] == ["process"]
        assert unit[("Service", "ExecStart")] == ["/usr/bin/agentd daemon"]
        assert unit.get(("Service", "DelegateSubgroup")) == ([leaf] if leaf else None), version
        # Where systemd starts the main process under that unit, and what agentd makes of it.
        started_in = f"{unit_cg}/{leaf}" if leaf else unit_cg
        p = decide(started_in, under_systemd=True)
        if leaf:
            assert (p.layout, p.root, p.self_cgroup) == ("delegate-subgroup", unit_cg.strip("/"),
                                                         f"{unit_cg.strip('/')}/{leaf}")
        else:
            assert (p.layout, p.root, p.self_cgroup) == ("unit+top-level", "agentd", unit_cg.strip("/"))


def test_unit_template_is_found():
    assert os.path.samefile(unit_template(), UNIT)


def test_sd_notify_datagrams_and_watchdog_interval(tmp_path, monkeypatch):
    import socket
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1")
        assert srv.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")          # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")


def test_unit_delegates_a_daemon_subgroup_only_where_systemd_knows_it(tmp_path):
    # systemd >= 254 starts the daemon in <unit>/daemon, the leaf agentd.placement expects;
    # older systemd would warn about the key on every reload, so it is left out there.
    new = settings(render_unit("/usr/bin/agentd", systemd=257))
    old = settings(render_unit("/usr/bin/agentd", systemd=252))
    assert new[("Service", "DelegateSubgroup")] == ["daemon"]
    assert ("Service", "DelegateSubgroup") not in old
    assert new[("Service", "Delegate")] == old[("Service", "Delegate")] == ["yes"]
    from agentd.placement import DAEMON_LEAF
    assert DAEMON_LEAF == "daemon"


def test_unit_sets_tasks_max_deliberately():
    # systemd's default (15% of the thread limit) would cap every agent together.
    with open(UNIT) as f:
        s = settings(f.read())
    assert s[("Service", "TasksMax")] == ["infinity"]


def test_log_lines_carry_journal_priorities_only_when_stderr_is_the_journal(tmp_path):
    import logging
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert sdnotify.stderr_is_journal(f.fileno(), env)
        # A stderr redirected elsewhere (a file, a pipe) keeps the inherited variable only.
        assert not sdnotify.stderr_is_journal(f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not sdnotify.stderr_is_journal(f.fileno(), {})
    fmt = sdnotify.JournalPrefix(logging.Formatter("%(levelname)s %(message)s"))
    rec = logging.LogRecord("agentd", logging.WARNING, __file__, 1, "low memory", None, None)
    assert fmt.format(rec) == "<4>WARNING low memory"
    assert [sdnotify.syslog_priority(lv) for lv in (50, 40, 30, 20, 10)] == [3, 3, 4, 6, 7]
