"""The guest kernel's own log after a systemd-tier run: an Oops, a BUG or a WARNING there
fails the tier even when every test passed (a daemon that tripped a kernel fault, or a
kernel whose state after a fault proves nothing). Standard library only: run.py uses it
on the host, tests/unit/test_systemd_kernel_log.py checks it against logs seen in runs.

The guest writes `dmesg -x` (facility and level before each line). Only the kernel's
facility counts: userspace writing to /dev/kmsg (virtme-ng's init: "WARNING: failed to
run: lvmconfig") cannot use it. Call traces alone are not faults: the OOM killer's
reports carry one.
"""

import re

# How each kernel fault report's first line starts (lib/bug.c, kernel/panic.c,
# arch/x86/kernel/dumpstack.c and traps.c).
FAULT = re.compile(r"(Oops: |BUG: |kernel BUG at |WARNING: |Kernel panic - |general protection fault)")
# An int3 trap at a static-key (jump label) site: the kernel patches such a site with a
# temporary int3 (text_poke_bp) and serializes every CPU before removing it; QEMU's TCG
# before 8.1 could still run a stale translation holding the int3 after that (fixed by
# QEMU commit deba78709a, "accel/tcg: Always lock pages before translation").
EMULATOR_INT3 = re.compile(r"Oops: int3: ")


def kernel_lines(dmesg_x):
    """The kernel facility's lines of `dmesg -x` output."""
    for line in dmesg_x.splitlines():
        facility, sep, rest = line.partition(":")
        if sep and facility.strip() == "kern":
            yield re.sub(r"^\s*\[\s*\d+\.\d+\]\s?", "", rest.split(":", 1)[-1].lstrip())


def faults(dmesg_x):
    """Every kernel fault report's first line, in order."""
    return [line for line in kernel_lines(dmesg_x) if FAULT.match(line)]


def console_faults(console):
    """The same from a console log (the guest died before it could run dmesg): a kernel
    report's line starts with its kind right after the timestamp; a userspace line
    written to /dev/kmsg starts with its writer's name ("virtme-ng-init: WARNING: ...")."""
    found = []
    for line in console.splitlines():
        m = re.match(r"\s*\[\s*\d+\.\d+\]\s?(.*)", line)
        if m and FAULT.match(m.group(1)):
            found.append(m.group(1))
    return found


def emulator_fault(found):
    """Whether the first fault is the emulator's int3 (whatever follows it is its
    consequence: the killed task, a panic in interrupt context)."""
    return bool(found) and bool(EMULATOR_INT3.search(found[0]))
