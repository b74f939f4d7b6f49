#!/bin/sh
# agentd CI: the kernel tier (tests/kernel/run.py) with what it needs installed first.
# Called by .ci/run after the host tests; extra arguments go to pytest in the guest.
# Exit status: the guest's pytest status, or non-zero when the tier could not run.
set -eu
cd "$(dirname "$0")/.."

# QEMU, depmod and the busybox that virtme-ng's init uses come from Debian; vng from PyPI.
missing=""
command -v qemu-system-x86_64 >/dev/null || missing="$missing qemu-system-x86"
command -v depmod >/dev/null || missing="$missing kmod"
[ -x /bin/busybox ] || command -v busybox >/dev/null || missing="$missing busybox-static"
command -v gcc >/dev/null || missing="$missing gcc"
command -v podman >/dev/null || missing="$missing podman"   # tests/kernel/test_containers.py
[ -x /usr/sbin/dockerd ] || missing="$missing docker.io"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
command -v vng >/dev/null || python3 -m pip install -q "virtme-ng>=1.30"

# run.py ends each VM run after 1800 s (the tier took 15 min with another VM beside it, on
# 2 cores) and runs the tier a second time when the emulated
# guest's kernel panics (a QEMU fault, see run.py); one run takes ~11 min on a quiet 2-core
# host. This cap leaves room for that second run and a cold kernel fetch on a busy host,
# and fails rather than hangs past it.
exec timeout --kill-after=10 2700 python3 tests/kernel/run.py "$@"
