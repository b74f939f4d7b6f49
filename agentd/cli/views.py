"""`agentd status`, `top`, `events` and `report`: what the daemon and its event log show."""

import json

from ..errors import AgentdError


def cmd_status(args):
    from ..api.client import connect
    from ..ui.table import status_lines
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
    from ..api.client import connect
    from ..ui.top import run_top

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
        from ..api.client import connect
        path = connect(args.socket, timeout=2).call("status").get("event_log")
        if path:
            return path
    except Exception:
        pass
    return "/var/log/agentd/events.jsonl"


def cmd_events(args):
    from ..ui.events import follow, print_events
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
        from ..ui import whatif
        agents, calls = whatif.load(path, args.agent)
        if args.json:
            print(json.dumps(whatif.as_json(agents, calls), indent=1))
        else:
            print("\n".join(whatif.text(agents, calls)))
        return 0
    if not args.output:
        raise AgentdError("agentd report needs -o FILE.png (or --what-if for a dry run's decisions)")
    from ..ui.report import draw, load
    calls = load(path, args.agent)
    drawn = draw(calls, args.output, title=args.agent or "all agents")
    print(f"{args.output}: {drawn['tool_calls']} tool calls, {drawn['samples']} memory samples, "
          f"{drawn['actions']} actions (from {path})")
    return 0
