"""Who may read what the daemon writes.

The state directory holds every agent's argv and history (state.json, the journal,
history.sqlite): it is the daemon's alone, 0700, files 0600, whether systemd made it
(StateDirectoryMode=0700 in the unit), `agentd install` did, or the daemon was started by
hand on a folder an older agentd left open (fixed at start, with one warning). The daemon runs with umask 077
so that whatever it creates is private unless it says otherwise; the places that must
stay reachable say so: the API socket (0666, authorised per request) and its folder
(0755), and cgroup directories (0755, the cgroupfs adapter). The event log holds argv
too and is created 0600 like the state (readable through `agentd events` as root).
"""

import logging
import os
import stat

from .errors import AgentdError

log = logging.getLogger("agentd")

DAEMON_UMASK = 0o077
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SHARED_DIR = 0o755


def private_dir(path):
    """Create `path` 0700, or make an existing one 0700 with its files 0600.

    A folder that belongs to another user is refused: its owner could swap what is
    inside under the daemon."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise AgentdError(f"state directory {path} is not a directory (a symbolic link?): remove it or "
                          f"choose another with --state-dir")
    if st.st_uid != os.geteuid():
        raise AgentdError(f"state directory {path} belongs to uid {st.st_uid}, not to the daemon's user "
                          f"(uid {os.geteuid()}): chown it or choose another with --state-dir")
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("state directory %s was mode %o: made it %o (it holds every agent's command lines)",
                    path, stat.S_IMODE(st.st_mode), PRIVATE_DIR)
        os.chmod(path, PRIVATE_DIR)
    with os.scandir(path) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                mode = stat.S_IMODE(e.stat(follow_symlinks=False).st_mode)
                if mode & 0o077:
                    os.chmod(e.path, mode & ~0o077)


def shared_dir(path):
    """Create `path` and any missing parents 0755 (the API socket's folder: every agent
    connects, whatever the daemon's umask)."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, SHARED_DIR)
        except FileExistsError:
            continue
        os.chmod(d, SHARED_DIR)
