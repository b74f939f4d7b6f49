#!/bin/sh
# agentd CI: the systemd tier (tests/systemd/run.py): the kernel tier's kernel booted with
# systemd as PID 1 over this host's root, where agentd is installed and run as a service.
# Called by .ci/run after the kernel tier (whose script installed QEMU and virtme-ng;
# .ci/setup.sh installed systemd-sysv, dbus, libpam-systemd, prometheus and the rest).
# Extra arguments go to pytest in the guest.
set -eu
cd "$(dirname "$0")/.."
command -v vng >/dev/null || python3 -m pip install -q "virtme-ng>=1.30"
# run.py ends a VM run after 1200 s (the package's apt install, remove and purge and the
# service's life, ~17 min on a busy 2-core host) and boots once more when the emulated
# guest's kernel hits the emulator's int3 fault; this cap leaves room for that and fails
# rather than hangs past it.
exec timeout --kill-after=10 2600 python3 tests/systemd/run.py "$@"
