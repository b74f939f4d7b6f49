"""The agentd command line: a thin client over the daemon (and the standalone host).

One module per command group: agent.py (run, tool), views.py (status, top, events,
report), admin.py (daemon, doctor, policy, reload, install); here the parser and main.
"""

import argparse
import logging
import sys

from ..errors import AgentdError, PolicyError
from .admin import cmd_daemon, cmd_doctor, cmd_install, cmd_policy, cmd_reload
from .agent import agent_user, cmd_run, cmd_tool
from .views import cmd_events, cmd_report, cmd_status, cmd_top

__all__ = ["agent_user", "build_parser", "main"]


def _setup_logging(verbose, daemon=False):
    level = logging.DEBUG if verbose else (logging.INFO if daemon else logging.WARNING)
    fmt = "%(levelname)s %(name)s: %(message)s" if daemon else "agentd: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    from ..sdnotify import JournalPrefix, stderr_is_journal
    if stderr_is_journal():
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalPrefix(handler.formatter))


def _listen_arg(text):
    """--metrics-listen: checked while parsing, with the policy's own rule, so a bad value
    stops before anything starts and every spelling of "off" means the same."""
    from ..policy.fields import normalise_listen
    try:
        return normalise_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    ins.add_argument("--unit-dir", default=None, help="where the unit goes (default /etc/systemd/system)")
    ins.add_argument("--systemd-version", type=int, default=None,
                     help="render the unit for this systemd version instead of this host's (packaging)")
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
