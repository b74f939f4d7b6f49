"""`agentd daemon`, `doctor`, `policy`, `reload` and `install`: running and looking after
the daemon."""

import os


def cmd_daemon(args):
    from ..daemon import Config, run_daemon
    cfg = Config(policy=args.policy or os.environ.get("AGENTD_POLICY", "default"), root=args.root,
                 socket=args.socket, state_dir=args.state_dir, event_log=args.event_log,
                 metrics_listen=args.metrics_listen, api_group=args.group, dry_run=args.dry_run)
    return run_daemon(cfg)


def cmd_doctor(args):
    from ..doctor import doctor
    return doctor(args)


def cmd_policy(args):
    from ..kernel.blkio import resolve
    from ..policy.loader import check_file
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


def cmd_reload(args):
    from ..api.client import connect
    print(connect(args.socket).call("reload").get("message", "reloaded"))
    return 0


def cmd_install(args):
    from ..install import install
    return install(args)
