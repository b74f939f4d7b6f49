"""Boot the kernel tier's VM (tests/kernel/run.py fetches and caches its kernel) and run one
shell command in it as root: the replay benchmark and bench/percall.py run their guest part
through this."""

import os
import shlex
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GUEST_SCRIPT = """\
#!/bin/sh
# Runs inside the kernel-tier guest; written by bench/replay/vm.py.
OUT={out}
swapoff -a 2>/dev/null
{swap}
cd {repo} || {{ echo 2 > "$OUT/status"; exit 0; }}
PYTHONDONTWRITEBYTECODE=1 {cmd} > "$OUT/guest.log" 2>&1
echo $? > "$OUT/status"
"""


# A zram swap device of SIZE (uncompressed capacity): the host a multi-tenant agentd is
# meant for has compressed swap in memory (zram, or zswap in front of a disk), no disk swap.
ZRAM_SWAP = """\
modprobe zram num_devices=1 && echo {size} > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null \\
  && swapon /dev/zram0 || echo "no zram swap in the guest" > "$OUT/swap.txt"
"""


def boot_in_vm(command, out, memory, timeout, on_tick=None, tries=3, zram=None):
    """boot_once, booted again when the guest kernel panicked before the command wrote any
    result (seen under QEMU's software emulation: an int3 Oops while the kernel patches its
    text, at boot or when a sched_ext scheduler is loaded). The command starts over then."""
    for attempt in range(tries):
        status = boot_once(command, out, memory, timeout, on_tick, zram)
        console = open(os.path.join(out, "console.log"), errors="replace").read()
        wrote = os.path.exists(os.path.join(out, "result.json"))
        if status is not None or wrote or "Kernel panic" not in console:
            return status
        os.replace(os.path.join(out, "console.log"), os.path.join(out, f"console.panic{attempt}.log"))
        print("replay: the guest kernel panicked before any result; booting again", file=sys.stderr)
    return None


def boot_once(command, out, memory, timeout, on_tick=None, zram=None):
    """Run `command` (a shell line) as root in the kernel tier's VM with `memory` of RAM;
    the guest sees the host's filesystem, `out` is writable; `zram` (e.g. "1G"): a zram
    swap of that size, else no swap. Returns the guest's exit status (None when it wrote
    none)."""
    sys.path.insert(0, os.path.join(REPO, "tests", "kernel"))
    import run as tier                  # tests/kernel/run.py: kernel fetch and cache
    tier.check_host()
    abi, vmlinuz = tier.prepare_kernel()
    script = os.path.join(out, "guest.sh")
    with open(script, "w") as f:
        f.write(GUEST_SCRIPT.format(out=shlex.quote(out), repo=shlex.quote(REPO), cmd=command,
                                    swap=ZRAM_SWAP.format(size=shlex.quote(zram)) if zram else ""))
    argv = ["vng", "--disable-kvm", "-r", vmlinuz, "--user", "root", "--memory", memory,
            "--cpus", tier.GUEST_CPUS, "--rwdir", out, "--cwd", REPO, "--exec", f"sh {shlex.quote(script)}",
            "--verbose"]
    with open(os.path.join(out, "console.log"), "w") as con:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if on_tick:
                    on_tick()
                time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if on_tick:
            on_tick()
    try:
        with open(os.path.join(out, "status")) as f:
            return int(f.read().strip() or 2)
    except (OSError, ValueError):
        return None
