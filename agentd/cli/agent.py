"""`agentd run` and `agentd tool`: an agent's sandbox and one tool call in it (through the
daemon, or the standalone host when none runs)."""

import json
import logging
import os
import sys
import time

from ..errors import AgentdError, PolicyError

log = logging.getLogger("agentd.cli")


def _cmd_after_dashes(args):
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("agentd: no command given: usage: agentd %s [options] -- CMD [ARGS...]" % args.command)
    return cmd


def agent_user(args, environ=os.environ, euid=None):
    """The user the agent runs as (a supervise.RunAs), or None to keep ours.

    `--user USER` chooses (root only, unless it names ourselves). Otherwise, started
    through sudo, the invoking user (SUDO_UID/SUDO_GID and that user's groups): root is
    needed to host or reach agentd, not by the agent, which runs code a model wrote.
    Running the agent as root takes `--user root`."""
    from ..supervise import RunAs
    euid = os.geteuid() if euid is None else euid
    if args.user:
        user = RunAs.lookup(args.user)
        if user is None:
            raise AgentdError(f"--user {args.user}: no such user")
        if user.uid == euid:
            return None
        if euid != 0:
            raise AgentdError(f"--user {args.user}: only root can run an agent as another user")
        return user
    sudo_uid = environ.get("SUDO_UID", "")
    if euid != 0 or not sudo_uid.isdigit() or int(sudo_uid) == 0:
        return None
    user = RunAs.lookup(sudo_uid)
    if user is None:
        raise AgentdError(f"SUDO_UID={sudo_uid} names no user; pass --user USER (or --user root)")
    gid = environ.get("SUDO_GID", "")
    if gid.isdigit() and int(gid) != user.gid:
        user = RunAs(user.uid, int(gid), user.name, user.home)
    return user


def cmd_run(args):
    from ..api.client import DaemonUnavailable, ReplyError, connect, socket_path
    from ..supervise import Held
    cmd = _cmd_after_dashes(args)
    user = agent_user(args)
    standalone = None
    try:
        client = connect(args.socket)
    except DaemonUnavailable:
        from ..daemon import Config
        from ..standalone import Standalone
        pid = os.getpid()
        run_dir = "/run/agentd" if os.access("/run", os.W_OK) else "/tmp"
        cfg = Config(policy=args.policy or "default", root=f"agentd.standalone/{pid}",
                     socket=f"{run_dir}/standalone-{pid}.sock", metrics_listen=args.metrics_listen,
                     standalone=True, event_log=args.event_log)
        standalone = Standalone(cfg)
        try:
            sock = standalone.start()
        except AgentdError as err:
            print(f"agentd: {err}", file=sys.stderr)
            return 125
        log.info("no daemon at %s: running standalone", socket_path(args.socket))
        client = connect(sock)
    if standalone is None and args.metrics_listen is not None:
        client.close()
        print(f"agentd: --metrics-listen is for a standalone run, but a daemon serves {socket_path(args.socket)}: "
              "it serves metrics as its policy's daemon.metrics_listen says; run without --metrics-listen",
              file=sys.stderr)
        return 125
    # Against a running daemon, --policy is the agent's own policy within the daemon's: read
    # here, with the caller's permissions (the daemon reads no file a client names).
    own_policy = None
    if standalone is None and args.policy:
        from ..policy.loader import resolve_policy
        path = resolve_policy(args.policy)
        try:
            own_policy = (str(path), path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            client.close()
            raise PolicyError([f"{path}: cannot read policy: {getattr(err, 'strerror', None) or err}"],
                              str(path)) from None
    held = Held(cmd, user=user)
    try:
        reply = _run_start(client, held, args, cmd, standalone is None, own_policy)
    except (ReplyError, DaemonUnavailable) as err:
        held.abort()
        print(f"agentd: {err}", file=sys.stderr)
        if standalone:
            standalone.stop()
        return 125
    held.release(reply.get("env"))
    status, _, code = held.wait()
    try:
        client.call("run_done", agent=reply["agent"], status=status)
    except DaemonUnavailable:
        # The daemon restarted while the agent ran: report to the new one.
        try:
            client = connect(args.socket if not standalone else standalone.app.socket_path)
            client.call("run_done", agent=reply["agent"], status=status)
        except (ReplyError, DaemonUnavailable) as err:
            log.warning("could not report the agent's end: %s", err)
    except ReplyError as err:
        log.warning("could not report the agent's end: %s", err)
    client.close()
    if standalone:
        standalone.stop()
    return code


def _run_start(client, held, args, cmd, may_retry, own_policy=None, patience_s=10.0):
    """Ask the daemon to place the held child; survive the daemon dying mid-request.

    If the daemon went away after moving the child into an agent's main cgroup, that agent
    exists (the restarted daemon re-adopts it): go on with it. If it went away before, ask
    the restarted daemon again. Only then give up.
    """
    from ..api.client import DaemonUnavailable, connect
    deadline = time.monotonic() + patience_s
    while True:
        try:
            extra = {"policy": own_policy[0], "policy_text": own_policy[1]} if own_policy else {}
            return client.call("run_start", pid=held.pid, name=args.name, **{"class": args.agent_class},
                               argv=cmd[:64], **extra)
        except DaemonUnavailable:
            if not may_retry or time.monotonic() > deadline:
                raise
        placed = _placed_agent(held.pid, args.socket)
        if placed:
            agent, sock = placed
            log.warning("the daemon restarted while starting agent %s; it re-adopts it", agent)
            return {"agent": agent, "env": {"AGENTD_AGENT": agent, "AGENTD_SOCKET": sock or ""}}
        time.sleep(0.2)
        try:
            client = connect(args.socket)
        except DaemonUnavailable:
            continue


def _placed_agent(pid, sock=None):
    """(agent id, socket) when `pid` already sits in some agent's main cgroup, else None."""
    from ..api.client import socket_path
    from ..kernel.procfs import ProcFS
    try:
        cg = ProcFS().cgroup(pid).strip("/")
    except AgentdError:
        return None
    parts = cg.split("/")
    if len(parts) >= 3 and parts[-1] == "main" and parts[-3] == "agents":
        return parts[-2], socket_path(sock)
    return None


# --- tool (Python fallback of the C launcher) -------------------------------------
def cmd_tool(args):
    from ..api.client import DaemonHung, DaemonUnavailable, ReplyError, connect, reply_timeout, socket_path
    from ..supervise import Held
    cmd = _cmd_after_dashes(args)
    try:
        client = connect(args.socket, timeout=reply_timeout())
    except DaemonUnavailable as err:
        print(f"agentd: {err}: running {cmd[0]} without a tool-call cgroup", file=sys.stderr)
        os.execvp(cmd[0], cmd)
    held = Held(cmd)
    t0 = time.monotonic()

    def notice(msg):
        print(msg.get("message", ""), file=sys.stderr)

    try:
        reply = client.call("tool_start", on_notice=notice, pid=held.pid, argv=cmd, mem=args.mem,
                            intent=args.intent, cwd=os.getcwd(), **{"class": args.tool_class})
    except DaemonHung as err:         # a hung daemon must not hang the agent
        held.abort()
        print(f"agentd: {err}: running {cmd[0]} without a tool-call cgroup", file=sys.stderr)
        os.execvp(cmd[0], cmd)
    except (ReplyError, DaemonUnavailable) as err:
        held.abort()
        print(f"agentd: {err}", file=sys.stderr)
        return 125
    for m in reply.get("messages", []):
        print(m, file=sys.stderr)
    held.release(reply.get("env"))
    status, rusage, code = held.wait()
    try:
        done = client.call("tool_done", on_notice=notice, agent=reply["agent"], tool=reply["tool"], status=status,
                           wall_s=time.monotonic() - t0, **rusage)
    except DaemonHung as err:         # the call has run; its end just goes unreported
        print(f"agentd: {err}; carrying on", file=sys.stderr)
        done = {}
    except DaemonUnavailable:
        try:
            client = connect(socket_path(args.socket), timeout=reply_timeout())
            done = client.call("tool_done", agent=reply["agent"], tool=reply["tool"], status=status,
                               wall_s=time.monotonic() - t0, **rusage)
        except (ReplyError, DaemonUnavailable):
            done = {}
    except ReplyError:
        done = {}
    for m in done.get("messages", []):
        print(m, file=sys.stderr)
    _write_feedback(done.get("result"))
    return code


def _write_feedback(result):
    if result is None:
        return
    line = json.dumps(result, separators=(",", ":")) + "\n"
    path = os.environ.get("AGENTD_FEEDBACK_FILE")
    if path:
        from ..api.feedback import open_result_file
        fd = open_result_file(path)
        if fd is not None:
            try:
                os.write(fd, line.encode())     # one O_APPEND write: parallel calls never interleave
            except OSError as err:
                print(f"agentd: cannot write the tool-call result to {path}: {err.strerror}", file=sys.stderr)
            finally:
                os.close(fd)
    fd = os.environ.get("AGENTD_FEEDBACK_FD")
    if fd and fd.isdigit():
        try:
            os.write(int(fd), line.encode())
        except OSError:
            pass
