"""Which children of an agent are tool calls: the policy's detection section applied to
what the kernel says a process is (its argv, its executable), and the compiled agentd front
recognised by its file. The detector (autodetect.py) asks these; detect.py places what
they accept.
"""

import hashlib
import logging
import os

from ..errors import AgentdError, ProcessGone

log = logging.getLogger("agentd.detect")


class Front:
    """The compiled `agentd` front, recognised by the file the kernel runs.

    It is never a tool call: it makes its own (race-free) one. argv[0] proves nothing
    (`exec -a agentd CMD`); the executable does: a process whose /proc/<pid>/exe has the
    launcher's content (the package's file, or an installed copy of it). The answer is
    kept per file identity (device, inode, size, mtime, ctime), so each file is hashed
    once. A Python front (`python -m agentd`) is not exempt: its interpreter would run
    any module named agentd."""

    KEPT = 256

    def __init__(self, procfs, path):
        self.procfs = procfs
        self.size = self.digest = None
        self.cache = {}
        if path and os.path.exists(path):
            self.size = os.stat(path).st_size
            with open(path, "rb") as f:
                self.digest = hashlib.sha256(f.read()).hexdigest()

    def runs(self, pid):
        if self.digest is None:
            return False
        try:
            st = self.procfs.exe_stat(pid)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            hit = self.cache.get(key)
            if hit is None:
                hit = st.st_size == self.size and self.procfs.exe_digest(pid) == self.digest
                if len(self.cache) >= self.KEPT:
                    self.cache.clear()
                self.cache[key] = hit
            return hit
        except AgentdError:
            return False

    def is_file(self, path):
        """Is the file at `path` the launcher? For a dry run's exec reports, read after the
        process may be gone (nothing stopped it): the path the kernel exec'd, from the
        event. Only a record depends on it, never a placement."""
        if self.digest is None or not path:
            return False
        try:
            if os.stat(path).st_size != self.size:
                return False
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() == self.digest
        except OSError:
            return False


class Recogniser:
    """The policy's answers about a process in an agent's main cgroup. `policy` is called
    for the current Policy on every question, so a reload takes effect at once; `shells`
    is the PersistentShells that knows the agent's persistent shells."""

    def __init__(self, policy, procfs, shells):
        self._policy = policy
        self.procfs = procfs
        self.shells = shells

    def is_tool(self, argv, leads_session):
        """The policy's answer from argv. argv exempts nothing by itself (`exec -a agentd`):
        the agentd front is recognised by its executable (Front, the detector's `exempt`)."""
        from ..policy.match import is_housekeeping
        if not argv:
            return False
        policy = self._policy()
        if policy.detection.new_session_only and not leads_session:
            return False
        if self.shells.is_shell_argv(argv):
            return False               # a persistent shell stays in main; its commands are the calls
        return not is_housekeeping(policy, argv)

    def is_agent_process(self, pid):
        """Is `pid` (a process in an agent's main cgroup) one of the agent's own programs
        (detection.agent_programs: the basename of its executable or of its argv[0])?
        Only their children are tool calls; with no list, every main process counts."""
        names = self._policy().detection.agent_programs
        if not names:
            return True
        procfs, seen = self.procfs, set()
        try:
            argv = procfs.cmdline(pid)
            if argv:
                seen.add(os.path.basename(argv[0]))
            seen.add(os.path.basename(procfs.exe(pid)))
        except ProcessGone:
            return False
        except AgentdError as err:        # e.g. exe unreadable: argv[0] alone decides
            log.debug("agent_programs: %s", err)
        return not seen.isdisjoint(names)
