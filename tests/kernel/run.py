#!/usr/bin/env python3
"""Run agentd's kernel test tier: `pytest -m kernel tests/kernel` inside a real kernel.

The development and CI hosts run a kernel whose controllers belong to cgroup v1 and that
lacks sched_ext, so limits, freezes and schedulers can only be proven in a VM. This script
fetches Debian trixie-backports' current kernel (without touching the machine's apt
configuration), caches it under `.cache/kernel/<version>/`, boots it under QEMU software
emulation with virtme-ng (the guest sees the host filesystem read-only) and runs pytest
there against this working tree.

    python3 tests/kernel/run.py [pytest args...]

Exit status: the guest's pytest status, or 2 when the tier itself could not run (kernel
not fetched, VM not booted, no result written). A tier that silently skips proves
nothing, so the only way to skip is the explicit AGENTD_SKIP_KERNEL_TIER=1 (local work).

Environment:
  AGENTD_SKIP_KERNEL_TIER=1     skip the tier (exit 0, with a message)
  AGENTD_KERNEL_TIER_TIMEOUT    seconds allowed for the VM run (default 1800)
  AGENTD_KERNEL_VERSION         use this cached/archived ABI (e.g. 7.3.4+deb13-amd64)
  AGENTD_KERNEL_PYTHON          interpreter used in the guest (default: this one)
  AGENTD_KERNEL_LISTS_MAX_AGE   seconds before the package lists are refreshed (default 3600)
  AGENTD_KERNEL_PYTEST_PLUGINS=1  let pytest autoload third-party plugins in the guest
  AGENTD_KERNEL_TEST_TIMEOUT    seconds one test may run in the guest (default 240)
Every AGENTD_* variable of the host is exported into the guest.

Standard library only: it must run before anything of agentd is installed.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

# Run as a script: this folder is on sys.path.
from kernel_fetch import REPO, CACHE, TierError, check_host, log, prepare_kernel, run

RUNS_DIR = os.path.join(CACHE, "runs")
KEEP_RUNS = 5

GUEST_MEMORY = "1G"
GUEST_CPUS = "2"
# Limit for the VM run. A quiet host runs the tier in ~5 min; a CI machine shared with
# other work has taken more than twice that (every Python start in the emulated guest slows
# with the host's load), so the limit leaves room for a busy host and still ends a hung guest.
DEFAULT_TIMEOUT = 1800


# --- running the guest --------------------------------------------------------------


GUEST_SCRIPT = """\
#!/bin/sh
# Runs inside the kernel-tier guest; written by tests/kernel/run.py.
OUT={out}
cut -d' ' -f1 /proc/uptime > "$OUT/boot_s"
uname -r > "$OUT/uname"
# bpffs and tracefs for BPF tests; virtme-ng mounts tracefs itself on current versions.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
# Give the test cgroups the controllers agentd relies on.
echo "+memory +cpu +pids +io" > /sys/fs/cgroup/cgroup.subtree_control || \\
  echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control
cd {repo} || {{ echo 2 > "$OUT/status"; exit 0; }}
{passenv}export AGENTD_KERNEL_TIER=1 AGENTD_KERNEL_TIER_OUT="$OUT" AGENTD_KERNEL_TIER_BIN="$OUT/bin"
export PYTHONDONTWRITEBYTECODE=1
# Every Python the tests start (daemons, CLIs) would run site's .pth hooks (editable-install
# finders, CA injection): ~20 s a start over 9p under emulation. Mask them in the guest
# only; PYTHONPATH puts this working tree and site-packages on the path instead.
for pth in {pth_globs}; do [ -f "$pth" ] && mount --bind /dev/null "$pth"; done
export PYTHONPATH={pythonpath}
{plugins}{python} -S -m pytest -m kernel -p no:cacheprovider --durations=12 {args} > "$OUT/pytest.txt" 2>&1
echo $? > "$OUT/status.tmp"
cut -d' ' -f1 /proc/uptime > "$OUT/end_s"
mv "$OUT/status.tmp" "$OUT/status"
"""


def new_run_dir():
    """A fresh results folder; old ones are pruned, but never one a run may still use
    (several engineers and CI steps run the tier from the same tree at once)."""
    os.makedirs(RUNS_DIR, exist_ok=True)
    old = sorted(os.listdir(RUNS_DIR))[:-KEEP_RUNS]
    stale = time.time() - 2 * (DEFAULT_TIMEOUT + 600)
    for name in old:
        path = os.path.join(RUNS_DIR, name)
        try:
            if os.path.getmtime(path) < stale:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
    out = os.path.join(RUNS_DIR, time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    os.makedirs(out)
    return out


def guest_python():
    """The interpreter and PYTHONPATH for the guest.

    The guest runs pytest with -S and masks the site-packages' .pth files: site's start-up
    (.pth hooks, editable-install finders) costs ~20 s over the guest's 9p root under
    emulation. The site-packages dirs go on PYTHONPATH instead, after the working tree,
    so the tests import this tree's agentd even where another copy is installed.
    """
    py = os.environ.get("AGENTD_KERNEL_PYTHON", sys.executable)
    try:
        dirs = run([py, "-c", "import site; print(':'.join(site.getsitepackages()))"]).stdout.strip()
    except TierError as err:
        raise TierError(f"cannot run the guest interpreter {py}: {err}") from err
    pythonpath = f"{REPO}:{dirs}"
    try:
        run([py, "-S", "-c", "import pytest"], env={**os.environ, "PYTHONPATH": pythonpath})
    except TierError as err:
        raise TierError(f"{py} cannot import pytest from {dirs} (the guest uses the host's "
                        f"interpreter): {err}") from err
    return py, pythonpath


def pytest_args(argv):
    """The caller's pytest args, with tests/kernel added unless they name test paths."""
    named = [a for a in argv if not a.startswith("-")
             and os.path.exists(os.path.join(REPO, a.split("::")[0]))]
    return list(argv) if named else [*argv, "tests/kernel"]


def build_helpers(out):
    """Compile every tests/kernel/*.c on the host into OUT/bin: gcc in the emulated guest
    takes ~20 s per file, here well under one. The guest finds them through
    AGENTD_KERNEL_TIER_BIN (same userspace on both sides: the guest runs the host's files)."""
    here = os.path.dirname(os.path.abspath(__file__))
    bindir = os.path.join(out, "bin")
    os.makedirs(bindir)
    for name in sorted(os.listdir(here)):
        if name.endswith(".c"):
            exe = os.path.join(bindir, name[:-2])
            run(["gcc", "-O2", "-Wall", "-Werror", "-o", exe, os.path.join(here, name)])
    return bindir


def boot(vmlinuz, out, argv, python, pythonpath):
    args = pytest_args(argv)
    script = os.path.join(out, "guest.sh")
    with open(script, "w") as f:
        f.write(GUEST_SCRIPT.format(
            out=shlex.quote(out), repo=shlex.quote(REPO), python=shlex.quote(python),
            pythonpath=shlex.quote(pythonpath),
            pth_globs=" ".join(shlex.quote(d) + "/*.pth" for d in pythonpath.split(":")[1:]),
            # The guest starts with a bare environment: hand on the AGENTD_* settings.
            passenv="".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(os.environ.items())
                            if k.startswith("AGENTD_") and k.isidentifier()),
            args=shlex.join(args),
            # Third-party pytest plugins (hypothesis, benchmark) cost ~10 s of start-up under
            # emulation; the kernel tests need none. AGENTD_KERNEL_PYTEST_PLUGINS=1 keeps them.
            plugins="" if os.environ.get("AGENTD_KERNEL_PYTEST_PLUGINS") == "1"
            else "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "))
    argv = [
        "vng", "--disable-kvm", "-r", vmlinuz, "--user", "root",
        "--memory", GUEST_MEMORY, "--cpus", GUEST_CPUS,
        "--rwdir", out, "--cwd", REPO, "--exec", f"sh {shlex.quote(script)}",
        # The kernel log (boot, OOM reports, panics) goes to console.log for diagnosis.
        "--verbose",
    ]
    timeout = float(os.environ.get("AGENTD_KERNEL_TIER_TIMEOUT", DEFAULT_TIMEOUT))
    console = os.path.join(out, "console.log")
    log(f"booting {vmlinuz} (timeout {timeout:.0f} s; console: {console})")
    t0 = time.monotonic()
    with open(console, "w") as con:
        # Own session, so a timeout can stop QEMU together with vng.
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=con,
                                stderr=subprocess.STDOUT, start_new_session=True)
        result, shown = os.path.join(out, "pytest.txt"), 0
        try:
            # Pass the guest's pytest output on as it grows: a run takes minutes.
            while proc.poll() is None and time.monotonic() - t0 < timeout:
                time.sleep(1)
                shown = show_new(result, shown)
            rc = proc.poll()
        finally:
            # Timed out, or we are being stopped (Ctrl-C, CI's timeout): take QEMU along.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    show_new(result, shown)
    wall = time.monotonic() - t0
    # vng exits 255 even when the guest command succeeded: only the files count.
    return rc, wall, console


def show_new(path, offset):
    """Print what was appended to `path` since `offset`; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def tail(path, n=40):
    text = read(path) or ""
    return "\n".join(text.splitlines()[-n:])


def _stop(signum, frame):
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so boot() stops the VM.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    signal.signal(signal.SIGTERM, _stop)
    if os.environ.get("AGENTD_SKIP_KERNEL_TIER") == "1":
        log("SKIPPED: AGENTD_SKIP_KERNEL_TIER=1 is set. Nothing was tested on a real cgroup v2 "
            "kernel; do not use this switch in CI.")
        return 0
    t_start = time.monotonic()
    try:
        check_host()
        python, pythonpath = guest_python()
        abi, vmlinuz = prepare_kernel()
        t_ready = time.monotonic()
        log(f"kernel {abi} ready in {t_ready - t_start:.1f} s")
        for attempt in (1, 2):
            out = new_run_dir()
            build_helpers(out)
            rc, wall, console = boot(vmlinuz, out, argv, python, pythonpath)
            status = read(os.path.join(out, "status"))
            # Under software emulation the guest kernel can die at boot, before any test ran
            # (seen: an int3 oops while patching static keys in sched_clock_init_late on a
            # loaded host). That is the emulator, not agentd: boot once more. A guest that
            # started its tests is never retried.
            if status is None and read(os.path.join(out, "boot_s")) is None and attempt == 1:
                log("the guest kernel died before the tests started; booting once more. Last console lines:\n"
                    + tail(console, 8))
                continue
            # The same emulator fault also strikes mid-run (seen: a vCPU executing a jump
            # half-patched by a static-key flip in try_to_wake_up, "Fatal exception in
            # interrupt"), when a daemon attaches tracepoints. A kernel panic is not a test
            # result: the whole tier runs once more. A test failure never is retried.
            if status is None and attempt == 1 and "Kernel panic" in tail(console, 400):
                log("the guest kernel panicked during the run; running the tier once more. Last console lines:\n"
                    + tail(console, 8))
                continue
            break
        if status is None:
            failures = read(os.path.join(out, "failures.txt"))
            if failures:
                print("\n== failures before the run was cut short ==\n" + failures)
            why = "timed out" if rc is None else f"vng exited {rc}"
            raise TierError(
                f"the guest wrote no result ({why} after {wall:.0f} s). Last console lines:\n"
                + tail(console))
        uname = (read(os.path.join(out, "uname")) or "").strip()
        if uname != abi:
            raise TierError(f"the guest ran kernel {uname!r}, not {abi}: results prove nothing")
        boot_s = read(os.path.join(out, "boot_s"))
        end_s = read(os.path.join(out, "end_s"))
        figures = read(os.path.join(out, "figures.txt"))
    except TierError as err:
        log(f"FAILED: {err}")
        return 2
    except KeyboardInterrupt as err:
        log(f"FAILED: interrupted ({err or 'Ctrl-C'}); the VM was stopped")
        return 130
    if figures:
        print("\n== kernel-tier figures ==")
        sys.stdout.write(figures)
    total = time.monotonic() - t_start
    timing = f"guest kernel {abi}: VM run {wall:.1f} s"
    if boot_s and end_s:
        timing += (f" (guest uptime at test start {float(boot_s):.1f} s, "
                   f"pytest {float(end_s) - float(boot_s):.1f} s)")
    log(f"{timing}; total {total:.1f} s; results in {out}")
    code = int(status.strip() or 2)
    log(f"guest pytest exit status {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
