#!/bin/sh
# agentd CI: the systemd tier (tests/systemd/run.py): the kernel tier's kernel booted with
# systemd as PID 1 over this host's root, where agentd is installed and run as a service.
# Called by .ci/run after the kernel tier (whose script installed QEMU and virtme-ng;
# .ci/setup.sh installed systemd-sysv, dbus, libpam-systemd, prometheus and the rest).
# Extra arguments go to pytest in the guest.
set -eu
cd "$(dirname "$0")/.."
command -v vng >/dev/null || python3 -m pip install -q "virtme-ng>=1.30"
# run.py ends a VM run after 1800 s (the package's apt install, remove and purge and the
# service's life took 1185 s on a 2-core host shared with another VM) and boots once more
# when the emulated guest's kernel hits the emulator's int3 fault. This cap leaves room for
# that retry after an early fault (the common case: at sched_ext's start) and otherwise
# fails rather than hangs.
exec timeout --kill-after=10 2700 python3 tests/systemd/run.py "$@"
