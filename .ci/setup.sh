#!/bin/bash
# Set up agentd on a Debian/Ubuntu host: system packages, the Python package (which
# compiles the `agentd` launcher and the eBPF objects), and `agentd install`
# (front command, systemd unit, policies, state dir). Idempotent. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# Debian 12 names the BPF compiler clang-19 (clang 14 lacks what the programs use);
# other releases may only have plain clang: take what exists.
# (A host that has it installed needs no package lists: an offline rerun works.)
clang_pkg=clang-19
if ! dpkg -s clang-19 >/dev/null 2>&1; then
    apt-cache show clang-19 >/dev/null 2>&1 || { apt-get update -qq; }
    apt-cache show clang-19 >/dev/null 2>&1 || clang_pkg=clang
fi
# libclang-rt: the libFuzzer and sanitizer runtimes for the launcher's fuzz harness test.
rt_pkg=libclang-rt-19-dev
[ "$clang_pkg" = clang ] && rt_pkg=libclang-rt-dev
# prometheus: the real-scrape tests; systemd: systemd-analyze verify of the unit, and with
# systemd-sysv (/sbin/init), libpam-systemd and dbus (login sessions) the root the systemd
# test tier boots (tests/systemd/README.md). They are used inside the tier's guest only:
# installing them changes no running init (a container's policy-rc.d also keeps dbus'
# package from starting its daemon here).
# podman (with its conmon and crun), docker.io (dockerd, containerd, runc): the container tests of
# the kernel tier run them in the guest (state on tmpfs, an image imported from a busybox + bash
# root fs tarball, a dockerd of the test's own); they use no service of the host's.
pkgs="$clang_pkg $rt_pkg bpftool libbpf1 libbpf-dev gcc make libc6-dev util-linux prometheus systemd systemd-sysv libpam-systemd dbus busybox-static podman docker.io"
need=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $need
fi

# A regular (not editable) install: the service runs the installed package, whatever
# happens to the checkout later (and systemd's PrivateTmp= would hide a checkout under
# /tmp from it). AGENTD_WHEEL installs a wheel built from this tree elsewhere instead
# (the systemd test tier builds it on the host: the guest has no network).
python3 -m pip install -q "${AGENTD_WHEEL:-.}[test,plot,gpu]"
# The tests run from the checkout: build its launcher and BPF objects in place too.
[ -n "${AGENTD_WHEEL:-}" ] || python3 -m agentd._build
# From a neutral folder, so the installed package (not the checkout's) installs itself.
(cd / && python3 -m agentd install)
echo "agentd is set up: try 'agentd doctor' and 'agentd run -- bash'"
