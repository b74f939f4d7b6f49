"""Disk I/O on a host whose cgroup v2 tree has no io controller (this one: its controllers
are bound to cgroup v1): a policy with io weights and maxima on a disk the host has loads,
the daemon says once that they are not written and runs tool calls as before; a policy
naming a disk the host lacks is refused at its line."""

import subprocess

from tests.helpers import REPO, DaemonProc, agentd_cmd

POLICY = """\
version: 1
agent_classes:
  normal: {{io: {{weight: 200}}}}
tool_classes:
  normal: {{priority: 50, io: {{wbps: 20MiB/s}}}}
io: {{devices: [{disk}]}}
detection:
  enabled: false
"""


def test_without_the_io_controller_one_warning_and_calls_run(tmp_path, test_root, cgfs):
    assert "io" not in cgfs.controllers(""), "this test is for a host without the io controller on cgroup v2"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(disk="/"))
    d = DaemonProc(str(tmp_path), test_root, policy=str(policy)).start()
    try:
        r = subprocess.run(agentd_cmd() + ["run", "--name", "io-fb", "--", *agentd_cmd(), "tool", "--", "true"],
                           capture_output=True, text=True, timeout=120, env=d.env, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "io" not in d.request({"op": "status"})["modes"]
    finally:
        d.cleanup()
    lines = [line for line in d.log().splitlines() if "disk I/O weights and limits off" in line]
    assert len(lines) == 1 and "the io controller is not enabled" in lines[0], d.log()[-2000:]
    starts = [e for e in d.events() if e.get("event") == "tool_start"]
    assert starts and not any(k.startswith("io.") for e in starts for k in e["limits"])


def test_a_disk_the_host_lacks_is_refused_at_its_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(disk="'259:77'"))
    r = subprocess.run(agentd_cmd() + ["policy", "check", str(policy)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    assert r.stdout.strip() == (f"{policy}:6: io.devices[0]: 259:77: there is no block device 259:77 on this host "
                                "(`lsblk` lists the disks)")
