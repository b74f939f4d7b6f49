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


def _cmd_after_dashes(args):
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("agentd: no command given: usage: agentd %s [options] -- CMD [ARGS...]" % args.command)
    return cmd


# --- run ----------------------------------------------------------------------
def cmd_run(args):
    from .api.client import DaemonUnavailable, ReplyError, connect, socket_path
    from .supervise import Held
    cmd = _cmd_after_dashes(args)
    standalone = None
    try:
        client = connect(args.socket)
    except DaemonUnavailable:
        from .daemon import Config, Standalone
        pid = os.getpid()
        run_dir = "/run/agentd" if os.access("/run", os.W_OK) else "/tmp"
        cfg = Config(policy=args.policy or "default", root=f"agentd.standalone/{pid}",
                     socket=f"{run_dir}/standalone-{pid}.sock", state_dir="", metrics_listen="none",
                     standalone=True, event_log=args.event_log)
        standalone = Standalone(cfg)
        try:
            sock = standalone.start()
        except AgentdError as err:
            print(f"agentd: {err}", file=sys.stderr)
            return 125
        log.info("no daemon at %s: running standalone", socket_path(args.socket))
        client = connect(sock)
    held = Held(cmd)
    try:
        reply = client.call("run_start", pid=held.pid, name=args.name, **{"class": args.agent_class},
                            policy=args.policy, argv=cmd[:64])
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


# --- tool (Python fallback of the C launcher) -------------------------------------
def cmd_tool(args):
    from .api.client import DaemonUnavailable, ReplyError, connect, socket_path
    from .supervise import Held
    cmd = _cmd_after_dashes(args)
    try:
        client = connect(args.socket)
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
    except DaemonUnavailable:
        try:
            client = connect(socket_path(args.socket))
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
        with open(path, "a") as f:
            f.write(line)
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
                 metrics_listen=args.metrics_listen, api_group=args.group)
    return run_daemon(cfg)


def cmd_doctor(args):
    from .doctor import doctor
    return doctor(args)


def cmd_policy(args):
    from .policy.loader import check_file
    if args.action == "check":
        bad = 0
        for path in args.files:
            problems = check_file(path)
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
    from .units import format_size
    c = connect(args.socket)
    snap = c.call("status", agent=args.agent)
    snap.pop("v", None)
    snap.pop("ok", None)
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print(f"{'AGENT':<24} {'CLASS':<10} {'TOOLS':>5} {'MEMORY':>10}  AGE")
    for a in snap["agents"]:
        mem = format_size(a["memory_bytes"]) if a.get("memory_bytes") is not None else "-"
        print(f"{a['agent']:<24} {a['agent_class']:<10} {len(a['tools']):>5} {mem:>10}  {a['age_s']:.0f}s")
        for t in a["tools"]:
            print(f"  {t['tool']:<22} {t['tool_class']:<10} peak {format_size(t['memory_peak_bytes']):>10}  "
                  f"{' '.join(t['argv'])[:60]}")
    for w in snap.get("warnings", []):
        print(f"warning: {w}")
    return 0


def cmd_events(args):
    from .eventlog import read_events
    path = args.event_log or "/var/log/agentd/events.jsonl"
    for rec in read_events(path, agent=args.agent):
        print(json.dumps(rec))
    if not args.follow:
        return 0
    with open(path) as f:
        f.seek(0, 2)
        while True:
            line = f.readline()
            if not line:
                time.sleep(0.2)
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if args.agent and rec.get("agent") != args.agent:
                continue
            print(json.dumps(rec), flush=True)


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
    r.add_argument("--policy")
    r.add_argument("--name")
    r.add_argument("--class", dest="agent_class")
    r.add_argument("--socket")
    r.add_argument("--event-log", default=None)
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
    d.add_argument("--metrics-listen", help="host:port for /metrics, or 'none'")
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

    e = sub.add_parser("events", help="print the event log")
    e.add_argument("--agent")
    e.add_argument("--follow", "-f", action="store_true")
    e.add_argument("--event-log")
    e.set_defaults(fn=cmd_events)

    rl = sub.add_parser("reload", help="reload the daemon's policy")
    rl.add_argument("--socket")
    rl.set_defaults(fn=cmd_reload)

    ins = sub.add_parser("install", help="install the agentd command, unit, policies and state dir")
    ins.add_argument("--prefix", default="/usr/local")
    ins.add_argument("--no-systemd", action="store_true")
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
