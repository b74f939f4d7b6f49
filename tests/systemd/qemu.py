#!/usr/bin/env python3
"""QEMU for the systemd tier's guest, given to virtme-ng as `--qemu-bin`: the same QEMU
with one change to the kernel command line. virtme-ng's early shell (`init=/bin/sh -c ...`)
ends with `exec /sbin/init`; this makes it exec tests/systemd/guest_init.sh, which gives
systemd a writable root without the host's /.dockerenv before it starts (see there).

Environment (set by tests/systemd/run.py): AGENTD_SYSTEMD_TIER_QEMU (the real QEMU) and
AGENTD_SYSTEMD_TIER_INIT (the guest command that replaces /sbin/init; no quotes or spaces
beyond word separators: it lands inside virtme-ng's double-quoted shell command)."""

import os
import sys

INIT_EXEC = "exec /sbin/init"


def main(argv):
    qemu = os.environ["AGENTD_SYSTEMD_TIER_QEMU"]
    args = list(argv)
    if "-append" in args:
        i = args.index("-append") + 1
        if args[i].count(INIT_EXEC) != 1:
            print(f"agentd systemd tier: virtme-ng's kernel command line has no single "
                  f"{INIT_EXEC!r} to replace (a virtme-ng change?): {args[i]}", file=sys.stderr)
            return 2
        args[i] = args[i].replace(INIT_EXEC, "exec /bin/sh " + os.environ["AGENTD_SYSTEMD_TIER_INIT"])
    os.execv(qemu, [qemu, *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
