"""Start a command that waits for the daemon's placement, then run it to the end.

The child is forked first and blocks on a pipe; the daemon moves it into its cgroup;
only then does it exec the command. So nothing the command forks can start outside.
Shared by `agentd run` and the Python fallback of `agentd tool`.
"""

import json
import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
             signal.SIGINT, signal.SIGQUIT)


class RunAs:
    """The user an agent runs as: `agentd run` keeps root for itself (it talks to the
    daemon, or hosts it) and gives the agent only this user's credentials."""

    def __init__(self, uid, gid, name, home=None, groups=None):
        self.uid, self.gid, self.name, self.home = uid, gid, name, home
        self.groups = groups if groups is not None else os.getgrouplist(name, gid)

    @classmethod
    def lookup(cls, who):
        """A user by name or number."""
        import pwd
        try:
            pw = pwd.getpwuid(int(who)) if str(who).isdigit() else pwd.getpwnam(who)
        except (KeyError, ValueError):
            return None
        return cls(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir)

    def become(self):
        """In the child, before exec: groups, then gid, then uid (the order that still
        has the privilege each step needs); HOME, USER and LOGNAME follow."""
        os.setgroups(self.groups)
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        os.environ["USER"] = os.environ["LOGNAME"] = self.name
        if self.home:
            os.environ["HOME"] = self.home


class Held:
    """A forked child held before exec until `release(env)`. With `user` (a RunAs) the
    child drops to that user after it is placed, just before exec."""

    def __init__(self, argv, user=None):
        self.argv = argv
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                       # child: only async-signal-safe-ish work until exec
            os.close(w)
            data = b""
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
            os.close(r)
            if not data:
                os._exit(125)              # the parent gave up: never run unplaced
            env = json.loads(data)
            os.environ.update(env)
            if user is not None:
                try:
                    user.become()
                except OSError as err:
                    sys.stderr.write(f"agentd: cannot run as user {user.name}: {err.strerror}\n")
                    os._exit(125)
            for s in FORWARDED:
                signal.signal(s, signal.SIG_DFL)
            try:
                os.execvp(argv[0], argv)
            except OSError as err:
                sys.stderr.write(f"agentd: cannot run {argv[0]!r}: {err.strerror}\n")
                os._exit(126 if err.errno in (13,) else 127)
        os.close(r)
        self.pid = pid
        self._w = w

    def release(self, env=None):
        os.write(self._w, json.dumps(env or {}).encode())
        os.close(self._w)
        self._w = None

    def abort(self):
        if self._w is not None:
            os.close(self._w)
            self._w = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def wait(self, interactive_tty=None):
        """Wait for the child, forwarding signals; return (status dict, rusage, exit code)."""
        if interactive_tty is None:
            interactive_tty = os.isatty(0) and os.getpgrp() == os.tcgetpgrp(0) if os.isatty(0) else False
        old = {}

        def forward(signum, _frame):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

        for s in FORWARDED:
            # With a terminal, ^C and ^\ already reach the child (same process group);
            # forwarding them too would deliver them twice.
            if interactive_tty and s in (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH):
                old[s] = signal.signal(s, signal.SIG_IGN)
            else:
                old[s] = signal.signal(s, forward)
        try:
            while True:
                try:
                    _, st, ru = os.wait4(self.pid, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        rusage = {"utime_s": ru.ru_utime, "stime_s": ru.ru_stime, "maxrss_kb": ru.ru_maxrss}
        if os.WIFSIGNALED(st):
            sig = os.WTERMSIG(st)
            return {"signal": sig}, rusage, 128 + sig
        code = os.WEXITSTATUS(st)
        return {"exit": code}, rusage, code
