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
  AGENTD_KERNEL_TIER_TIMEOUT    seconds allowed for the VM run (default 480)
  AGENTD_KERNEL_VERSION         use this cached/archived ABI (e.g. 7.3.4+deb13-amd64)
  AGENTD_KERNEL_PYTHON          interpreter used in the guest (default: this one)
  AGENTD_KERNEL_LISTS_MAX_AGE   seconds before the package lists are refreshed (default 3600)
  AGENTD_KERNEL_PYTEST_PLUGINS=1  let pytest autoload third-party plugins in the guest
  AGENTD_KERNEL_TEST_TIMEOUT    seconds one test may run in the guest (default 120)
Every AGENTD_* variable of the host is exported into the guest.

Standard library only: it must run before anything of agentd is installed.
"""

import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "kernel")
APT_DIR = os.path.join(CACHE, "apt")
RUNS_DIR = os.path.join(CACHE, "runs")
KEEP_RUNS = 5

SUITE = "trixie-backports"
ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
META_PACKAGE = "linux-image-amd64"

GUEST_MEMORY = "1G"
GUEST_CPUS = "2"
# The guest's own tests need at least this; the VM boot adds ~15-20 s under TCG.
DEFAULT_TIMEOUT = 480

# Host commands the tier needs, and where each comes from (for the error message).
NEEDED = {
    "apt-get": "apt (Debian)",
    "apt-cache": "apt (Debian)",
    "dpkg-deb": "dpkg (Debian)",
    "depmod": "apt-get install kmod",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "busybox": "apt-get install busybox-static",
    "vng": "pip install virtme-ng",
    "gcc": "apt-get install gcc",
}


class TierError(Exception):
    """The tier could not run; the message says what to do."""


def log(msg):
    print(f"kernel-tier: {msg}", file=sys.stderr, flush=True)


def run(argv, **kw):
    """Run a host command; a failure becomes a TierError carrying its output."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as err:
        raise TierError(f"{argv[0]} not found: {NEEDED.get(argv[0], 'install it')}") from err
    except subprocess.CalledProcessError as err:
        out = (err.stdout or "") + (err.stderr or "")
        raise TierError(f"`{shlex.join(argv)}` failed (exit {err.returncode}):\n{out.strip()}") from err


def check_host():
    missing = [f"{cmd} ({how})" for cmd, how in NEEDED.items() if not shutil.which(cmd)]
    if missing:
        raise TierError("missing host commands: " + ", ".join(missing))
    if os.geteuid() != 0:
        raise TierError("must run as root (it links /lib/modules/<version> and boots the guest as root)")
    if not os.path.exists(KEYRING):
        raise TierError(f"{KEYRING} missing: apt-get install debian-archive-keyring")


# --- fetching the kernel ------------------------------------------------------------


def apt_options():
    """apt options that confine apt to APT_DIR: the machine's sources, preferences, lists
    and archive cache are neither read nor written."""
    return [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={APT_DIR}/sources.list.d",
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", f"Dir::Etc::PreferencesParts={APT_DIR}/preferences.d",
        "-o", f"Dir::State::Lists={APT_DIR}/lists",
        "-o", f"Dir::Cache={APT_DIR}/cache",
        # The downloads land in our own folder, which the _apt user may not be able to
        # enter; without this apt warns on every file.
        "-o", "APT::Sandbox::User=root",
    ]


def write_sources():
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(APT_DIR, sub), exist_ok=True)
    with open(os.path.join(APT_DIR, "sources.list.d", "agentd-kernel.sources"), "w") as f:
        f.write(
            "Types: deb\n"
            f"URIs: {ARCHIVE}\n"
            f"Suites: {SUITE}\n"
            "Components: main\n"
            f"Signed-By: {KEYRING}\n"
        )


def lists_age():
    lists = os.path.join(APT_DIR, "lists")
    try:
        stamps = [os.path.getmtime(os.path.join(lists, n)) for n in os.listdir(lists) if "Packages" in n]
    except OSError:
        return None
    return time.time() - max(stamps) if stamps else None


def refresh_lists():
    """`apt-get update` into our private lists, unless they are fresh enough."""
    write_sources()
    age = lists_age()
    max_age = float(os.environ.get("AGENTD_KERNEL_LISTS_MAX_AGE", "3600"))
    if age is not None and age < max_age:
        return
    try:
        run(["apt-get", *apt_options(), "update"])
    except TierError as err:
        if age is None:
            raise TierError(f"cannot fetch the {SUITE} package lists from {ARCHIVE}:\n{err}") from err
        log(f"WARNING: package list refresh failed, using lists {age / 3600:.1f} h old:\n{err}")


def depends(package):
    """Package names in the Depends of `package` (alternatives flattened, versions dropped)."""
    out = run(["apt-cache", *apt_options(), "show", "--no-all-versions", package]).stdout
    m = re.search(r"^Depends: (.*)$", out, re.M)
    if not m:
        return []
    names = []
    for part in m.group(1).split(","):
        for alt in part.split("|"):
            names.append(alt.strip().split(" ")[0])
    return names


def resolve_version():
    """The kernel ABI name (e.g. 7.3.4+deb13-amd64) the suite's meta package points at,
    and the packages that hold its image, modules and base files."""
    pinned = os.environ.get("AGENTD_KERNEL_VERSION")
    if pinned:
        abi = pinned
    else:
        images = [d for d in depends(META_PACKAGE) if d.startswith("linux-image-")]
        if not images:
            raise TierError(f"{META_PACKAGE} in {SUITE} names no linux-image-* dependency")
        abi = images[0][len("linux-image-"):]
    # Since 7.x Debian splits linux-image-<abi> into binary/modules/base packages; older
    # kernels ship everything in linux-image-<abi> itself.
    parts = [d for d in depends(f"linux-image-{abi}") if d.startswith("linux-") and d.endswith(f"-{abi}")]
    return abi, parts or [f"linux-image-{abi}"]


def kernel_dir(abi):
    return os.path.join(CACHE, abi)


def modules_dir(abi):
    # Merged-/usr packages ship /usr/lib/modules; older ones /lib/modules.
    for sub in ("usr/lib/modules", "lib/modules"):
        d = os.path.join(kernel_dir(abi), sub, abi)
        if os.path.isdir(d):
            return d
    return None


def fetch(abi, packages):
    """Download and unpack the kernel into .cache/kernel/<abi>/ (once)."""
    root = kernel_dir(abi)
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    shutil.rmtree(root, ignore_errors=True)
    debs = os.path.join(CACHE, "debs", abi)
    os.makedirs(debs, exist_ok=True)
    t0 = time.monotonic()
    log(f"downloading {' '.join(packages)} from {SUITE} ...")
    try:
        run(["apt-get", *apt_options(), "download", *packages], cwd=debs)
    except TierError as err:
        raise TierError(f"cannot download kernel {abi}:\n{err}") from err
    files = sorted(os.path.join(debs, n) for n in os.listdir(debs) if n.endswith(".deb"))
    size = sum(os.path.getsize(f) for f in files)
    log(f"downloaded {size / 2**20:.0f} MiB in {time.monotonic() - t0:.1f} s; unpacking")
    os.makedirs(root, exist_ok=True)
    for deb in files:
        run(["dpkg-deb", "-x", deb, root])
    shutil.rmtree(debs, ignore_errors=True)
    mods = modules_dir(abi)
    if not mods or not os.path.exists(os.path.join(mods, "vmlinuz")):
        # Older packaging keeps the image in /boot: put it next to the modules.
        boot = os.path.join(root, "boot", f"vmlinuz-{abi}")
        if mods and os.path.exists(boot):
            shutil.copy(boot, os.path.join(mods, "vmlinuz"))
        else:
            raise TierError(f"unpacked kernel {abi} has no modules dir with a vmlinuz under {root}")
    open(done, "w").close()


def cached_versions():
    try:
        return sorted(n for n in os.listdir(CACHE) if os.path.exists(os.path.join(CACHE, n, ".complete")))
    except OSError:
        return []


def install_modules_link(abi):
    """virtme-ng looks for the guest's modules in /lib/modules/<abi> on the host: link our
    cached tree there (never replacing a real directory) and build its module index."""
    target = modules_dir(abi)
    link = os.path.join("/lib/modules", abi)
    os.makedirs("/lib/modules", exist_ok=True)
    if os.path.islink(link):
        if os.path.realpath(link) != os.path.realpath(target):
            os.unlink(link)
    elif os.path.exists(link):
        if os.path.realpath(link) != os.path.realpath(target):
            log(f"note: {link} is a real directory; virtme-ng will use it as is")
        return link
    if not os.path.islink(link):
        os.symlink(target, link)
    if not os.path.exists(os.path.join(target, "modules.dep")):
        run(["depmod", abi])
    return link


def prepare_kernel():
    """Resolve, fetch and link the kernel; returns (abi, path of vmlinuz)."""
    os.makedirs(CACHE, exist_ok=True)
    # One fetch at a time: several engineers (and CI steps) share this tree.
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            refresh_lists()
            abi, packages = resolve_version()
        except TierError:
            # Offline with a kernel already cached: still a real kernel, so still a real
            # test; say so loudly. A pinned version never falls back to another one.
            cached = cached_versions()
            if not cached or os.environ.get("AGENTD_KERNEL_VERSION"):
                raise
            abi = cached[-1]
            log(f"WARNING: cannot resolve the current {SUITE} kernel; using cached {abi}")
            packages = None
        if packages is not None:
            fetch(abi, packages)
        link = install_modules_link(abi)
    return abi, os.path.join(link, "vmlinuz")


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
PYTHONPATH={pythonpath} {plugins}{python} -S -m pytest -m kernel -p no:cacheprovider {args} > "$OUT/pytest.txt" 2>&1
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

    The guest runs Python with -S: site's start-up (.pth hooks, editable-install finders,
    scanning site-packages) costs ~20 s over the guest's 9p root under emulation. The
    site-packages dirs go on PYTHONPATH instead, after the working tree, so the tests
    import this tree's agentd even where another copy is installed.
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
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            # Timed out, or we are being stopped (Ctrl-C, CI's timeout): take QEMU along.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - t0
    # vng exits 255 even when the guest command succeeded: only the files count.
    return rc, wall, console


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
        out = new_run_dir()
        build_helpers(out)
        rc, wall, console = boot(vmlinuz, out, argv, python, pythonpath)
        status = read(os.path.join(out, "status"))
        result = read(os.path.join(out, "pytest.txt"))
        if result is not None:
            sys.stdout.write(result)
            sys.stdout.flush()
        if status is None:
            why = "timed out" if rc is None else f"vng exited {rc}"
            raise TierError(
                f"the guest wrote no result ({why} after {wall:.0f} s). Last console lines:\n"
                + tail(console))
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
