#!/bin/sh
# agentd CI: the systemd tier (tests/systemd/run.py): the kernel tier's VM, booted with
# systemd as PID 1, where agentd is installed and run as a service. Called by .ci/run
# after the kernel tier (whose script installed QEMU and virtme-ng; .ci/setup.sh installed
# systemd, prometheus and the rest). Extra arguments go to pytest in the guest.
set -eu
cd "$(dirname "$0")/.."
command -v vng >/dev/null || python3 -m pip install -q "virtme-ng>=1.30"
# run.py ends the VM after 900 s; this cap adds room for a cold kernel fetch.
exec timeout --kill-after=10 1200 python3 tests/systemd/run.py "$@"
