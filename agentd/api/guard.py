"""What one caller may hold of the API server: connections per uid and in all, file
descriptors kept back for the daemon's own work, and log lines a flood can cause.

Every local user can reach agentd's socket, and the daemon runs as root: a user who holds
connections open must not use up the descriptors the daemon needs for cgroupfs, /proc and
BPF (each cgroup write opens a file), and a storm of refused connections or bad requests
must not turn into a storm of log lines.
"""

import errno
import resource
import time

# Descriptors never handed to connections: cgroupfs files, /proc reads, BPF objects, the
# event log, the metrics endpoint. Measured use of a daemon with BPF loaded is under 60.
FD_RESERVE = 256
# However large the limit, more connections than this are not served at once.
MAX_CONNECTIONS = 16384
# Each connection holds its socket and the peer's pidfd (api/server.py: identity).
FDS_PER_CONNECTION = 2
# accept() failures (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting for this long,
# doubling while they go on: a full descriptor table is not a reason to spin.
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 2.0
ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one (systemd's LimitNOFILE= sets both;
    started by hand the soft limit is often 1024). Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def connection_budget():
    """Connections the server may hold now: the descriptor limit less the reserve, over the
    descriptors each connection holds. Read each time (one syscall): the limit can change
    under a running daemon (prlimit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (soft - FD_RESERVE) // FDS_PER_CONNECTION))


class ConnectionCounts:
    """Open connections per uid; the refusals by reason (a metric)."""

    def __init__(self):
        self.by_uid = {}
        self.total = 0
        self.refused = {}

    def over(self, uid, per_uid):
        """The reason a new connection of `uid` is refused, or None. Root is bounded by
        the total only: all root agents' tool calls share uid 0."""
        if self.total >= connection_budget():
            return "total"
        if uid != 0 and self.by_uid.get(uid, 0) >= per_uid:
            return "per_uid"
        return None

    def add(self, uid):
        self.by_uid[uid] = self.by_uid.get(uid, 0) + 1
        self.total += 1

    def remove(self, uid):
        n = self.by_uid.get(uid, 0) - 1
        if n > 0:
            self.by_uid[uid] = n
        else:
            self.by_uid.pop(uid, None)
        self.total -= 1

    def count_refusal(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1


class RateLimitedLog:
    """At most `burst` lines per key in each `interval_s`; the lines held back are counted
    and said with the next line that goes out."""

    def __init__(self, logger, burst=10, interval_s=10.0):
        self.log = logger
        self.burst, self.interval_s = burst, interval_s
        self._keys = {}           # key -> [window start, lines in window, suppressed]

    def __call__(self, key, level, msg, *args, exc_info=False):
        now = time.monotonic()
        st = self._keys.get(key)
        if st is None or now - st[0] >= self.interval_s:
            if len(self._keys) > 1024:
                self._keys.clear()
            suppressed = st[2] if st else 0
            st = self._keys[key] = [now, 0, 0]
            if suppressed:
                self.log.log(level, "(%d similar messages suppressed)", suppressed)
        if st[1] >= self.burst:
            st[2] += 1
            return False
        st[1] += 1
        self.log.log(level, msg, *args, exc_info=exc_info)
        return True

