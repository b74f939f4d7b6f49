#!/bin/sh
# PID 1 of the systemd tier's guest until systemd takes over (virtme-ng's early shell execs
# it in place of /sbin/init: tests/systemd/qemu.py). The guest boots the host's own root,
# read-only over 9p, and that root carries /.dockerenv: systemd (PID 1 and every generator
# and service that asks) would take the guest for a Docker container, ignore the kernel
# command line, start a console getty instead of the serial one that runs the tests, and
# fail systemd-logind. So systemd gets a root of its own: an overlay of the host's root with
# a tmpfs on top (writes vanish with the guest), without /.dockerenv, set up for a test boot.
#   guest_init.sh RUN_DIR   (RUN_DIR/masked-units: the units to mask, one a line)
set -eu
run_dir=$1
new=/tmp/root

fail() {
    echo "agentd guest init: $*; powering off" >&2
    echo o > /proc/sysrq-trigger
    sleep 60
}
trap 'fail "a step failed (exit status $?)"' EXIT

# Read before /tmp is covered: the checkout (and RUN_DIR in it) may itself live under /tmp.
masked=$(cat "$run_dir/masked-units")
# (Not `mountpoint`: over 9p with multidevs=remap the host's /proc, /dev look like mounts.)
mount -t proc proc /proc
# The overlay's layers live on a tmpfs over the (read-only) root's /tmp; the merged root
# sees the host root only (the tmpfs is another file system), its /tmp gets a tmpfs too (a
# boot's systemd-tmpfiles empties /tmp: the host's, seen through the overlay, would take
# minutes). A checkout under /tmp (the test runner's cwd; RUN_DIR, which virtme-ng mounts
# again in the new root) stays visible: its overlay view is moved onto the new /tmp, where
# tmpfiles does not descend (another file system).
mount -t tmpfs -o mode=0755 agentd-root-layers /tmp
mkdir /tmp/upper /tmp/work "$new"
mount -t overlay agentd-root -o lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work "$new"
case "$run_dir" in
/tmp/?*)
    top=/tmp/$(printf '%s' "${run_dir#/tmp/}" | cut -d/ -f1)
    mount -n --bind "$new$top" /mnt
    mount -t tmpfs -o mode=1777 tmpfs "$new/tmp"
    mkdir -p "$new$top"
    # -n: the mount is made; util-linux cannot record it in the read-only root (exit 16)
    mount -n --move /mnt "$new$top"
    ;;
*)
    mount -t tmpfs -o mode=1777 tmpfs "$new/tmp"
    ;;
esac
# A whiteout in the upper layer: the file is gone in the guest, never on the host.
rm -f "$new/.dockerenv" "$new/run/.containerenv"
[ ! -e "$new/.dockerenv" ] || fail "/.dockerenv still exists in the overlay"
# The container image's policy-rc.d (exit 101: "no service starts during docker build")
# would make every package's maintainer scripts skip starting and stopping their services
# (invoke-rc.d, deb-systemd-invoke); a host booted by systemd has none.
rm -f "$new/usr/sbin/policy-rc.d"
[ ! -e "$new/usr/sbin/policy-rc.d" ] || fail "/usr/sbin/policy-rc.d still exists in the overlay"

# What virtme-ng's early shell set up on the old root, again in the new one: its fstab
# (mount nothing of the host's) and the modules of the kernel under test.
cat /etc/fstab > "$new/etc/fstab"
kver=$(uname -r)
moddir=$(readlink "/lib/modules/$kver")
mount -t tmpfs -o mode=0755 modules "$new/lib/modules"
ln -s "$moddir" "$new/lib/modules/$kver"

units=$new/etc/systemd/system
# Host services a test guest does not need (minutes of emulated boot): masked.
for unit in $masked; do
    ln -sfn /dev/null "$units/$unit"
done
# A fresh machine as far as agentd goes: the host's own install (if any) is not the one tested.
rm -f "$units/agentd.service"
# Its policies too: a package installed over them would stop at dpkg's conffile question.
rm -rf "$new/etc/agentd"
ln -sfn /lib/systemd/system/multi-user.target "$units/default.target"
# The serial getty, which virtme-ng's drop-in turns into the test runner, waits for udev to
# announce its tty (BindsTo=dev-%i.device), and the host root (a container's) has no udev:
# the job would time out and the tests never start. Without that binding the getty starts
# on the console, which exists from the kernel's first line.
sed -e '/^BindsTo=dev-%i\.device/d' -e 's/^After=dev-%i\.device /After=/' \
    /lib/systemd/system/serial-getty@.service > "$units/serial-getty@.service"
grep -q 'dev-%i' "$units/serial-getty@.service" && fail "serial-getty@.service still names dev-%i"
# The journal in /run: virtme-ng's init in the getty mounts a tmpfs over /var/log (a
# read-only host root has no other place for logs), which would hide journald's persistent
# files from every journalctl run after it.
mkdir -p "$new/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$new/etc/systemd/journald.conf.d/agentd-tier.conf"
# virtme-ng's init in the getty would lay tmpfs overlays over /etc, /usr, /var ... that
# the whole writable root makes useless (and that would hide what systemd wrote there).
mkdir -p "$units/serial-getty@.service.d"
overlays=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^\(virtme_rw_overlay[0-9]*\)=.*/\1/p' | tr '\n' ' ')
printf '[Service]\nUnsetEnvironment=%s\n' "$overlays" > "$units/serial-getty@.service.d/zz-agentd-tier.conf"

# Devices: the kernel's one devtmpfs, mounted again in the new root (systemd expects it).
mount -t devtmpfs devtmpfs "$new/dev"
umount /proc
cd "$new"
pivot_root . mnt
trap - EXIT
unset container
# The old root (and the layers' tmpfs under it) leaves the mount table; the overlay keeps
# its own references to them.
exec chroot . /bin/sh -c 'umount -l /mnt; exec /lib/systemd/systemd'
