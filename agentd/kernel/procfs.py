"""/proc adapter: the few per-process facts agentd needs, with `proc` as a parameter."""

import os

from ..errors import KernelError, ProcessGone


class ProcFS:
    def __init__(self, proc="/proc"):
        self.proc = proc

    def _read(self, pid, name, mode="r"):
        try:
            with open(f"{self.proc}/{pid}/{name}", mode) as f:
                return f.read()
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(f"process {pid} is gone") from err
        except OSError as err:
            raise KernelError(f"reading /proc/{pid}/{name}: {err.strerror}") from err

    def cgroup(self, pid):
        """cgroup v2 path of `pid` relative to the v2 mount, with a leading '/'."""
        for line in self._read(pid, "cgroup").splitlines():
            if line.startswith("0::"):
                return line[3:]
        raise KernelError(f"process {pid} has no cgroup v2 membership")

    def stat(self, pid):
        """(ppid, pgid, sid, starttime) from /proc/<pid>/stat."""
        raw = self._read(pid, "stat")
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = raw[raw.rindex(")") + 2:].split()
        return int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19])

    def ppid(self, pid):
        return self.stat(pid)[0]

    def cmdline(self, pid):
        raw = self._read(pid, "cmdline", "rb")
        return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []

    def comm(self, pid):
        return self._read(pid, "comm").strip()

    def groups(self, pid):
        """Real uid, primary gid and supplementary group ids of `pid` (from status)."""
        uid = gid = None
        groups = []
        for line in self._read(pid, "status").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
            elif line.startswith("Groups:"):
                groups = [int(g) for g in line.split()[1:]]
        return uid, gid, groups

    def exists(self, pid):
        return os.path.exists(f"{self.proc}/{pid}")
