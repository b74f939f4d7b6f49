"""Plain-words feedback for the agent: what happened to its tool call and what would help.

An agent reads stderr; one sentence there lets it adapt (run fewer tests, fewer workers)
instead of retrying the same thing into the same wall.
"""

import os

from ..ui.text import printable
from ..units import format_size

_ADVICE = {
    "pytest": "run a subset of the tests (-k, a single file) or fewer workers (-n 1)",
    "tox": "run one environment (-e) at a time",
    "npm": "install fewer packages at once or lower concurrency",
    "pip": "install one requirement at a time or use --no-cache-dir",
    "cargo": "build with fewer jobs (-j 1) or without --release",
    "make": "build with fewer jobs (-j 1)",
    "mvn": "build a single module (-pl) or lower -T",
    "gradle": "build a single module or lower --max-workers",
}


def _program(argv):
    from ..policy.match import program_of
    return program_of(argv)


def advice_for(argv):
    return _ADVICE.get(_program(argv), "use less memory (smaller inputs, fewer parallel jobs)")


def messages_for(result):
    """One sentence per notable outcome of a finished tool call (empty when all went well)."""
    prog = _program(result.get("argv") or [])
    out = []
    limit = result.get("limits", {}).get("memory.max")
    forecast = result.get("forecast_bytes")
    fc = f" (forecast {format_size(forecast)})" if forecast else ""
    for a in result.get("actions", []):
        if a.get("action") == "queue":
            waited = f"{a.get('seconds', 0):.1f} s"
            why = ("the wait timed out, so it ran anyway" if a.get("timed_out")
                   else "it started once running tool calls made room")
            out.append(f"[agentd] {prog} waited {waited} for memory before starting: the host's memory budget "
                       f"was taken by other tool calls{fc}; {why}")
            break
    if result.get("outcome") == "killed":
        why = next((a.get("reason") for a in result.get("actions", []) if a.get("action") == "kill"), None)
        out.append(f"[agentd] {prog} was killed by agentd: {why or 'memory pressure'}{fc}; "
                   f"{advice_for(result.get('argv'))}")
    elif result.get("outcome") == "oom_killed":
        lim = f"its {format_size(int(limit))} limit" if limit and limit != "max" else "its memory limit"
        out.append(f"[agentd] {prog} was killed: it reached {lim}{fc}; {advice_for(result.get('argv'))}")
    else:
        for a in result.get("actions", []):
            if a.get("action") == "freeze":
                out.append(f"[agentd] {prog} was paused for {a.get('seconds', 0):.1f} s while the host was short "
                           f"of memory; it finished afterwards")
                break
        for a in result.get("actions", []):
            if a.get("action") == "throttle":
                out.append(f"[agentd] {prog} was slowed down: memory was tight ({a.get('reason', 'pressure')}); "
                           f"{advice_for(result.get('argv'))}")
                break
    if result.get("stragglers") and result.get("cgroup_removed"):
        out.append(f"[agentd] {result['stragglers']} background process(es) left by {prog} were stopped when it ended")
    # The program name comes from the agent's argv: the sentences go to a terminal.
    return [printable(m) for m in out]


def open_result_file(path, err=None):
    """Open `$AGENTD_FEEDBACK_FILE` for appending, or None after one line on `err` (stderr).

    The path comes from the environment, which the agent (or whatever steers it)
    controls, and `agentd tool` may run as root: appending must not write to a file this
    user could not write itself. A symbolic link (planted in /tmp by another user, say)
    is not followed, and only a regular file this user owns, with no other name, is
    written; a FIFO cannot hold the call up. The same rules as the C front's (proto.c)."""
    import errno
    import stat
    import sys
    err = err or sys.stderr
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        print(f"agentd: not writing the tool-call result to {path}: {why}", file=err)
        return None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "it is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"it belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif st.st_nlink > 1:
        why = "it has more than one name (hard links)"
    if why:
        os.close(fd)
        print(f"agentd: not writing the tool-call result to {path}: {why}", file=err)
        return None
    return fd
