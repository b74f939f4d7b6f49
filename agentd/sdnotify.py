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


# syslog(3) priorities of Python's log levels, for journald's "<N>" line prefix.
_PRIORITY = ((40, 3), (30, 4), (20, 6))     # ERROR and above: err; WARNING: warning; INFO: info


def stderr_is_journal(fd=2, environ=os.environ):
    """True when `fd` is the stream systemd connected to the journal: JOURNAL_STREAM
    names its device and inode (systemd.exec(5)), so a redirected stderr is not taken for it."""
    want = environ.get("JOURNAL_STREAM")
    if not want:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def syslog_priority(levelno):
    for floor, prio in _PRIORITY:
        if levelno >= floor:
            return prio
    return 7                                     # debug


class JournalPrefix:
    """A logging.Formatter wrapper that starts each record with "<N>": journald then files
    the line under priority N (SyslogLevelPrefix=, on by default), so `journalctl -p
    warning -u agentd` shows agentd's warnings instead of every line at priority info."""

    def __init__(self, inner):
        self.inner = inner

    def format(self, record):
        return f"<{syslog_priority(record.levelno)}>{self.inner.format(record)}"
