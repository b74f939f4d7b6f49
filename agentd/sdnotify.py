"""systemd's notify protocol (sd_notify(3)): READY, RELOADING, STOPPING, WATCHDOG, STATUS.

A datagram to $NOTIFY_SOCKET; no dependency needed for a dozen lines.
"""

import os
import socket


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]        # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval():
    """Seconds between watchdog pings (half of WatchdogSec), or None when not enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
