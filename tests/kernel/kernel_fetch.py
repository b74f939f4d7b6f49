"""Fetch and cache Debian trixie-backports' current kernel for the kernel tier.

apt runs with a private configuration under `.cache/kernel/apt/` (sources, preferences,
lists, archive cache): the machine's own apt setup is neither read nor changed. The
kernel is unpacked into `.cache/kernel/<abi>/` once and reused; `prepare_kernel()` is the
entry point (used by run.py). Standard library only.
"""

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "kernel")
APT_DIR = os.path.join(CACHE, "apt")

SUITE = "trixie-backports"
ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
META_PACKAGE = "linux-image-amd64"

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
    """Fully unpacked kernels in the cache, oldest fetch first."""
    marks = []
    try:
        for name in os.listdir(CACHE):
            mark = os.path.join(CACHE, name, ".complete")
            if os.path.exists(mark):
                marks.append((os.path.getmtime(mark), name))
    except OSError:
        return []
    return [name for _, name in sorted(marks)]


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
        pinned = os.environ.get("AGENTD_KERNEL_VERSION")
        try:
            if pinned and pinned in cached_versions():
                # Already here: no archive needed (it may have left the suite since).
                abi, packages = pinned, None
            else:
                refresh_lists()
                abi, packages = resolve_version()
        except TierError:
            # Offline with a kernel already cached: still a real kernel, so still a real
            # test; say so loudly. A pinned version never falls back to another one.
            cached = cached_versions()
            if not cached or pinned:
                raise
            abi = cached[-1]
            log(f"WARNING: cannot resolve the current {SUITE} kernel; using cached {abi}")
            packages = None
        if packages is not None:
            fetch(abi, packages)
        link = install_modules_link(abi)
    return abi, os.path.join(link, "vmlinuz")
