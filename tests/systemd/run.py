#!/usr/bin/env python3
"""Run agentd's systemd tier: `pytest -m systemd tests/systemd` in a guest that boots
Debian trixie-backports' kernel (sched_ext, full cgroup v2) with **systemd as PID 1**.

The guest is virtme-ng's `--systemd` over this host's own root: read-only over 9p, with a
tmpfs overlay on top that vanishes with the guest and hides the host's /.dockerenv
(guest_init.sh, run in place of /sbin/init through qemu.py), so the host must have
systemd installed (.ci/setup.sh installs it). The
kernel comes from tests/kernel/kernel_fetch.py's cache. The tests install agentd the way
the README says (.ci/setup.sh, handed a wheel built here from this tree, since the guest
has no network), `systemctl enable --now agentd`, and drive the service.

    python3 tests/systemd/run.py [pytest args...]

Exit status: the guest's pytest status (at least 1 when the guest kernel logged an Oops,
BUG or WARNING: kernel_log.py), or 2 when the tier could not run.
Environment: AGENTD_SKIP_SYSTEMD_TIER=1 skips it (exit 0, said loudly; never in CI);
AGENTD_SYSTEMD_TIER_TIMEOUT (seconds for the VM run, default 1800); every AGENTD_*
variable is exported into the guest. Standard library only.
"""

import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kernel"))
from kernel_fetch import REPO, TierError, check_host, prepare_kernel, run  # noqa: E402

import kernel_log  # noqa: E402  (this folder, first on sys.path as the script's own)

CACHE = os.path.join(REPO, ".cache", "systemd")
RUNS_DIR = os.path.join(CACHE, "runs")
KEEP_RUNS = 5
GUEST_MEMORY = "2G"
GUEST_CPUS = "2"
DEFAULT_TIMEOUT = 1800

# The host root's own services that a test guest does not need and that would cost
# minutes of emulated boot (container engines, a database, timers). Masked in the guest's
# overlay root before systemd starts (guest_init.sh): nothing on the host changes. prometheus.service is masked too:
# the metrics test starts its own Prometheus with a config that scrapes agentd.
MASK = ("docker.service", "docker.socket", "containerd.service", "podman.service", "podman.socket",
        "podman-restart.service", "podman-auto-update.service", "podman-auto-update.timer",
        "postgresql.service", "prometheus.service", "prometheus-node-exporter.service",
        "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
        "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "systemd-timesyncd.service",
        "systemd-pstore.service", "ssh.service", "cron.service")

GUEST_SCRIPT = """\
#!/bin/sh
# Runs inside the systemd tier's guest (started by virtme-ng from the serial getty that
# the kernel command line made the boot's target); written by tests/systemd/run.py.
OUT={out}
trap '' HUP
cut -d' ' -f1 /proc/uptime > "$OUT/boot_s"
uname -r > "$OUT/uname"
cat /proc/1/comm > "$OUT/init"
systemctl --version | head -1 > "$OUT/systemd_version"
# The boot goes on around this getty (Type=idle starts it once the boot's jobs are out).
timeout 300 systemctl start multi-user.target > "$OUT/multi_user.txt" 2>&1
timeout 120 systemctl is-system-running --wait > "$OUT/system_state" 2>&1
systemctl list-units --failed --no-legend --plain > "$OUT/failed_units" 2>&1
cat /proc/self/mountinfo > "$OUT/mounts.txt"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
cd {repo} || {{ echo 2 > "$OUT/status"; exit 0; }}
# The interpreter that runs this script, first on PATH: the guest's login PATH may find
# another python3 (the distribution's) that has neither pytest nor agentd's dependencies.
export PATH={pybin}:$PATH
{passenv}export AGENTD_SYSTEMD_TIER=1 AGENTD_SYSTEMD_TIER_OUT="$OUT" AGENTD_WHEEL={wheel}
export PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -m systemd -p no:cacheprovider -o addopts= \\
  --durations=0 {args} > "$OUT/pytest.txt" 2>&1
echo $? > "$OUT/status.tmp"
cut -d' ' -f1 /proc/uptime > "$OUT/end_s"
journalctl -b --no-pager -o short-monotonic > "$OUT/journal.txt" 2>&1
dmesg -x > "$OUT/dmesg.txt" 2>&1
mv "$OUT/status.tmp" "$OUT/status"
systemctl poweroff --no-block
"""


def log(msg):
    print(f"systemd-tier: {msg}", file=sys.stderr, flush=True)


def new_run_dir():
    os.makedirs(RUNS_DIR, exist_ok=True)
    for name in sorted(os.listdir(RUNS_DIR))[:-KEEP_RUNS]:
        path = os.path.join(RUNS_DIR, name)
        if os.path.getmtime(path) < time.time() - 2 * DEFAULT_TIMEOUT:
            shutil.rmtree(path, ignore_errors=True)
    out = os.path.join(RUNS_DIR, time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    os.makedirs(out)
    return out


def build_wheel(out):
    """The wheel .ci/setup.sh installs in the guest, built from this tree (launcher and BPF
    objects compiled here: clang in the emulated guest would take minutes)."""
    t0 = time.monotonic()
    dist = os.path.join(out, "wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO])
    wheels = glob.glob(os.path.join(dist, "agentd-*.whl"))
    if len(wheels) != 1:
        raise TierError(f"pip wheel left {wheels} in {dist}")
    log(f"built {os.path.basename(wheels[0])} in {time.monotonic() - t0:.1f} s")
    return wheels[0]


def build_deb(out, wheel):
    """The Debian package test_deb.py installs with apt in the guest, from the same wheel;
    handed in as AGENTD_DEB (every AGENTD_* variable reaches the guest)."""
    t0 = time.monotonic()
    out_dir = os.path.join(out, "deb")
    run([sys.executable, "-m", "agentd.deploy.deb", "--wheel", wheel, "--out", out_dir], cwd=REPO)
    debs = glob.glob(os.path.join(out_dir, "agentd_*.deb"))
    if len(debs) != 1:
        raise TierError(f"agentd.deploy.deb left {debs} in {out_dir}")
    log(f"built {os.path.basename(debs[0])} in {time.monotonic() - t0:.1f} s")
    return debs[0]


def check_systemd_root():
    for path in ("/sbin/init", "/usr/bin/systemctl", "/usr/bin/prometheus", "/usr/sbin/runuser"):
        if not os.path.exists(path):
            raise TierError(f"{path} missing on the host root the guest boots: run .ci/setup.sh "
                            "(Debian packages systemd, systemd-sysv, prometheus, util-linux)")
    if os.path.realpath("/sbin/init").rsplit("/", 1)[-1] != "systemd":
        raise TierError("/sbin/init is not systemd: install systemd-sysv (.ci/setup.sh)")


def boot(vmlinuz, out, wheel, argv):
    script = os.path.join(out, "guest.sh")
    args = list(argv) if any(not a.startswith("-") for a in argv) else [*argv, "tests/systemd"]
    with open(script, "w") as f:
        f.write(GUEST_SCRIPT.format(
            out=shlex.quote(out), repo=shlex.quote(REPO), pybin=shlex.quote(os.path.dirname(sys.executable)), wheel=shlex.quote(wheel), args=shlex.join(args),
            passenv="".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(os.environ.items())
                            if k.startswith("AGENTD_") and k.isidentifier())))
    with open(os.path.join(out, "masked-units"), "w") as f:
        f.write("".join(u + "\n" for u in MASK))
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise TierError("qemu-system-x86_64 not found: run .ci/kernel-tier.sh's setup")
    init = f"{os.path.join(HERE, 'guest_init.sh')} {out}"
    if any(c not in "/._-+=:@ " and not c.isalnum() for c in init):
        raise TierError(f"the checkout's path {REPO!r} has characters the guest's init line "
                        "cannot carry: clone it under a plain path")
    env = dict(os.environ, AGENTD_SYSTEMD_TIER_QEMU=qemu, AGENTD_SYSTEMD_TIER_INIT=init)
    argv = ["vng", "--disable-kvm", "--systemd", "-r", vmlinuz, "--user", "root",
            "--memory", GUEST_MEMORY, "--cpus", GUEST_CPUS, "--rwdir", out, "--cwd", REPO,
            "--qemu", os.path.join(HERE, "qemu.py"),
            "--exec", f"sh {shlex.quote(script)}", "--verbose"]
    timeout = float(os.environ.get("AGENTD_SYSTEMD_TIER_TIMEOUT", DEFAULT_TIMEOUT))
    console = os.path.join(out, "console.log")
    log(f"booting {vmlinuz} with systemd as init (timeout {timeout:.0f} s; console: {console})")
    t0 = time.monotonic()
    with open(console, "w") as con:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=con,
                                stderr=subprocess.STDOUT, start_new_session=True)
        shown = 0
        try:
            while proc.poll() is None and time.monotonic() - t0 < timeout:
                time.sleep(1)
                shown = show_new(os.path.join(out, "pytest.txt"), shown)
                if os.path.exists(os.path.join(out, "status")):
                    try:                      # the guest powers off; then stop QEMU ourselves
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        pass
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    show_new(os.path.join(out, "pytest.txt"), shown)
    return time.monotonic() - t0, console


def show_new(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    sys.stdout.write(data.decode(errors="replace"))
    sys.stdout.flush()
    return offset + len(data)


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    signal.signal(signal.SIGTERM, _stop)
    if os.environ.get("AGENTD_SKIP_SYSTEMD_TIER") == "1":
        log("SKIPPED: AGENTD_SKIP_SYSTEMD_TIER=1 is set; agentd was not tested under systemd")
        return 0
    t_start = time.monotonic()
    try:
        check_host()
        check_systemd_root()
        abi, vmlinuz = prepare_kernel()
        for attempt in (1, 2):
            out = new_run_dir()
            wheel = build_wheel(out)
            os.environ["AGENTD_DEB"] = build_deb(out, wheel)
            wall, console = boot(vmlinuz, out, wheel, argv)
            status = read(os.path.join(out, "status"))
            # The guest kernel's faults: from its dmesg and from the console, which also holds
            # what a wrapped ring buffer (128 KiB) lost and what a guest that died first printed.
            found = list(dict.fromkeys(kernel_log.faults(read(os.path.join(out, "dmesg.txt")) or "")
                                       + kernel_log.console_faults(read(console) or "")))
            # QEMU's software emulation (before 8.1) sometimes runs a stale copy of kernel
            # text that a static-key flip is patching: an int3 oops (kernel_log.py). A run
            # whose first kernel fault is that one is the emulator's, not agentd's: boot
            # once more. Any other fault, or a test failure alone, is never retried.
            if attempt == 1 and kernel_log.emulator_fault(found):
                log("the guest kernel hit the emulator's int3 fault; booting once more. Its faults:\n"
                    + "\n".join(found[:8]))
                continue
            break
        if status is None:
            tail = "\n".join((read(console) or "").splitlines()[-40:])
            raise TierError(f"the guest wrote no result after {wall:.0f} s (results in {out}). "
                            f"Last console lines:\n{tail}")
        if not any(kernel_log.kernel_lines(read(os.path.join(out, "dmesg.txt")) or "")):
            raise TierError(f"the guest's dmesg.txt holds no kernel line (results in {out}): "
                            "its kernel faults cannot be checked")
        if read(os.path.join(out, "uname")) != abi or read(os.path.join(out, "init")) != "systemd":
            raise TierError(f"the guest ran kernel {read(os.path.join(out, 'uname'))!r} with init "
                            f"{read(os.path.join(out, 'init'))!r}, not {abi} with systemd: results prove nothing")
    except TierError as err:
        log(f"FAILED: {err}")
        return 2
    except KeyboardInterrupt as err:
        log(f"FAILED: interrupted ({err}); the VM was stopped")
        return 130
    boot_s, end_s = read(os.path.join(out, "boot_s")), read(os.path.join(out, "end_s"))
    log(f"{read(os.path.join(out, 'systemd_version'))}, system {read(os.path.join(out, 'system_state'))}, "
        f"kernel {abi}: VM run {wall:.1f} s (guest uptime at test start {boot_s} s, tests "
        f"{float(end_s) - float(boot_s):.1f} s); total {time.monotonic() - t_start:.1f} s; results in {out}")
    failed = read(os.path.join(out, "failed_units"))
    if failed:
        log(f"failed units in the guest:\n{failed}")
    code = int(status or 2)
    log(f"guest pytest exit status {code}")
    # The tests passing is not enough: the guest kernel must have logged no Oops, BUG or
    # WARNING meanwhile.
    if found:
        log("FAILED: the guest kernel logged faults (dmesg.txt, console.log in the results):\n"
            + "\n".join(found[:20]))
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
