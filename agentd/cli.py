"""The agentd command line: a thin client over the daemon (and the standalone host)."""

import argparse
import json
import logging
import os
import sys
import time

from .errors import AgentdError, PolicyError

log = logging.getLogger("agentd.cli")


def _setup_logging(verbose, daemon=False):
    level = logging.DEBUG if verbose else (logging.INFO if daemon else logging.WARNING)
    fmt = "%(levelname)s %(name)s: %(message)s" if daemon else "agentd: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    from .sdnotify import JournalPrefix, stderr_is_journal
    if stderr_is_journal():
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalPrefix(handler.formatter))


def _listen_arg(text):
    """--metrics-listen: checked while parsing, with the policy's own rule, so a bad value
    stops before anything starts and every spelling of "off" means the same."""
    from .policy.fields import normalise_listen
    try:
        return normalise_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_after_dashes(args):
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("agentd: no command given: usage: agentd %s [options] -- CMD [ARGS...]" % args.command)
    return cmd


# --- run ----------------------------------------------------------------------
def agent_user(args, environ=os.environ, euid=None):
    """The user the agent runs as (a supervise.RunAs), or None to keep ours.

    `--user USER` chooses (root only, unless it names ourselves). Otherwise, started
    through sudo, the invoking user (SUDO_UID/SUDO_GID and that user's groups): root is
    needed to host or reach agentd, not by the agent, which runs code a model wrote.
    Running the agent as root takes `--user root`."""
    from .supervise import RunAs
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
    from .api.client import DaemonUnavailable, ReplyError, connect, socket_path
    from .supervise import Held
    cmd = _cmd_after_dashes(args)
    user = agent_user(args)
    standalone = None
    try:
        client = connect(args.socket)
    except DaemonUnavailable:
        from .daemon import Config
        from .standalone import Standalone
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
        from .policy.loader import resolve_policy
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
    from .api.client import DaemonUnavailable, connect
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
    from .api.client import socket_path
    from .kernel.procfs import ProcFS
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
    from .api.client import DaemonHung, DaemonUnavailable, ReplyError, connect, reply_timeout, socket_path
    from .supervise import Held
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
        from .api.feedback import open_result_file
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


# --- daemon, doctor, policy, status, events, reload ----------------------------------
def cmd_daemon(args):
    from .daemon import Config, run_daemon
    cfg = Config(policy=args.policy or os.environ.get("AGENTD_POLICY", "default"), root=args.root,
                 socket=args.socket, state_dir=args.state_dir, event_log=args.event_log,
                 metrics_listen=args.metrics_listen, api_group=args.group, dry_run=args.dry_run)
    return run_daemon(cfg)


def cmd_doctor(args):
    from .doctor import doctor
    return doctor(args)


def cmd_policy(args):
    from .kernel.blkio import resolve
    from .policy.loader import check_file
    if args.action == "check":
        bad = 0
        for path in args.files:
            # The disks io.devices names are looked up on this host, as percentages are
            # resolved against its memory.
            problems = check_file(path, block_device=resolve)
            if problems:
                bad += 1
                for p in problems:
                    print(p)
            else:
                print(f"{path}: ok")
        return 1 if bad else 0
    return 2


def cmd_status(args):
    from .api.client import connect
    from .ui.table import status_lines
    c = connect(args.socket)
    snap = c.call("status", agent=args.agent)
    snap.pop("v", None)
    snap.pop("ok", None)
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print("\n".join(status_lines(snap)))
    return 0


def cmd_top(args):
    from .api.client import connect
    from .ui.top import run_top

    def call():
        c = connect(args.socket)
        try:
            return c.call("status", agent=args.agent)
        finally:
            c.close()
    return run_top(call, interval=args.interval, once=args.once, iterations=args.iterations)


def _event_log_path(args):
    """--event-log, else where the running daemon writes it, else the policy's default."""
    if args.event_log:
        return args.event_log
    try:
        from .api.client import connect
        path = connect(args.socket, timeout=2).call("status").get("event_log")
        if path:
            return path
    except Exception:
        pass
    return "/var/log/agentd/events.jsonl"


def cmd_events(args):
    from .ui.events import follow, print_events
    path = _event_log_path(args)
    kinds = set(args.type or [])
    print_events(path, agent=args.agent, kinds=kinds, as_json=args.json, last=args.last,
                 out=lambda line: print(line, flush=True))
    if args.follow:
        follow(path, agent=args.agent, kinds=kinds, as_json=args.json, out=lambda line: print(line, flush=True))
    return 0


def cmd_report(args):
    path = _event_log_path(args)
    if args.what_if:
        from .ui import whatif
        agents, calls = whatif.load(path, args.agent)
        if args.json:
            print(json.dumps(whatif.as_json(agents, calls), indent=1))
        else:
            print("\n".join(whatif.text(agents, calls)))
        return 0
    if not args.output:
        raise AgentdError("agentd report needs -o FILE.png (or --what-if for a dry run's decisions)")
    from .ui.report import draw, load
    calls = load(path, args.agent)
    drawn = draw(calls, args.output, title=args.agent or "all agents")
    print(f"{args.output}: {drawn['tool_calls']} tool calls, {drawn['samples']} memory samples, "
          f"{drawn['actions']} actions (from {path})")
    return 0


def cmd_reload(args):
    from .api.client import connect
    print(connect(args.socket).call("reload").get("message", "reloaded"))
    return 0


def cmd_install(args):
    from .install import install
    return install(args)


def build_parser():
    p = argparse.ArgumentParser(prog="agentd", description="Resource controller for AI coding agents.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="start an agent sandbox in its own cgroup tree")
    r.add_argument("--policy", help="standalone: the policy to run; with a daemon: this agent's own policy, "
                                    "applied within the daemon's (only tighter; refused otherwise)")
    r.add_argument("--name")
    r.add_argument("--class", dest="agent_class")
    r.add_argument("--socket")
    r.add_argument("--event-log", default=None)
    r.add_argument("--metrics-listen", type=_listen_arg,
                   help="standalone runs only: serve /metrics on HOST:PORT (default: off)")
    r.add_argument("--user", help="user the agent runs as (default: the user who ran sudo, else ours); "
                                  "--user root runs it as root")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("tool", help="run one tool call in its own cgroup inside the caller's agent")
    t.add_argument("--class", dest="tool_class")
    t.add_argument("--mem")
    t.add_argument("--intent")
    t.add_argument("--socket")
    t.add_argument("cmd", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_tool)

    d = sub.add_parser("daemon", help="run the controller in the foreground")
    d.add_argument("--policy")
    d.add_argument("--root", help="cgroup subtree to own, relative to the cgroup v2 mount")
    d.add_argument("--socket")
    d.add_argument("--group", help="group whose members may create agents")
    d.add_argument("--state-dir")
    d.add_argument("--event-log")
    d.add_argument("--metrics-listen", type=_listen_arg,
                   help="HOST:PORT for /metrics, or off/none/disabled (default: the policy's daemon.metrics_listen)")
    d.add_argument("--dry-run", action="store_true",
                   help="enforcement decides and logs every action but writes no limit, freeze or kill")
    d.set_defaults(fn=cmd_daemon)

    doc = sub.add_parser("doctor", help="print what this host supports and which modes are active")
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--policy")
    doc.set_defaults(fn=cmd_doctor)

    pol = sub.add_parser("policy", help="policy tools")
    pol.add_argument("action", choices=["check"])
    pol.add_argument("files", nargs="+")
    pol.set_defaults(fn=cmd_policy)

    s = sub.add_parser("status", help="agents, tool calls, limits")
    s.add_argument("--json", action="store_true")
    s.add_argument("--agent")
    s.add_argument("--socket")
    s.set_defaults(fn=cmd_status)

    tp = sub.add_parser("top", help="live view of agents and tool calls")
    tp.add_argument("--agent")
    tp.add_argument("--socket")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.add_argument("--iterations", type=int, help="exit after this many frames")
    tp.set_defaults(fn=cmd_top)

    e = sub.add_parser("events", help="print the event log")
    e.add_argument("--agent")
    e.add_argument("--follow", "-f", action="store_true")
    e.add_argument("--type", action="append", help="only events of this kind (repeatable): tool_end, action, ...")
    e.add_argument("--last", type=int, help="only the last N matching events")
    e.add_argument("--json", action="store_true", help="raw JSON lines instead of text")
    e.add_argument("--event-log")
    e.add_argument("--socket")
    e.set_defaults(fn=cmd_events)

    rp = sub.add_parser("report", help="draw memory over time per tool call (PNG; needs matplotlib), or list "
                                       "what a dry-run daemon would have done (--what-if)")
    rp.add_argument("--agent")
    rp.add_argument("-o", "--output", help="PNG file to write")
    rp.add_argument("--what-if", action="store_true",
                    help="per tool call, the limits, ladder steps and admission waits a --dry-run daemon decided")
    rp.add_argument("--json", action="store_true", help="with --what-if: JSON instead of text")
    rp.add_argument("--event-log")
    rp.add_argument("--socket")
    rp.set_defaults(fn=cmd_report)

    rl = sub.add_parser("reload", help="reload the daemon's policy")
    rl.add_argument("--socket")
    rl.set_defaults(fn=cmd_reload)

    ins = sub.add_parser("install", help="install the agentd command, unit, policies and state dir")
    ins.add_argument("--prefix", default="/usr/local")
    ins.add_argument("--no-systemd", action="store_true")
    ins.add_argument("--root", default="/", help="stage everything below this directory (packaging, tests)")
    ins.set_defaults(fn=cmd_install)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    _setup_logging(args.verbose, daemon=args.command == "daemon")
    try:
        return args.fn(args) or 0
    except PolicyError as err:
        print(f"agentd: invalid policy:\n{err}", file=sys.stderr)
        return 1
    except AgentdError as err:
        print(f"agentd: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
