"""`agentd doctor`: what this host supports, which modes agentd would use, and why."""

import json
import os

from .errors import AgentdError


def gather(policy_name=None):
    from .kernel import cgroupfs, probe
    mount = cgroupfs.find_cgroup2_mount()
    caps = probe.probe(mount)
    out = {"capabilities": caps.as_dict(), "warnings": caps.warnings()}
    try:
        from .policy.loader import load_policy
        load_policy(policy_name or "default")
        out["policy"] = {"name": policy_name or "default", "ok": True}
    except AgentdError as err:
        out["policy"] = {"name": policy_name or "default", "ok": False, "error": str(err)}
    modes = {}
    try:
        from .monitor import bpf_status
        modes["monitoring"] = bpf_status()
    except Exception as err:      # the BPF layer is optional: say why it is off
        modes["monitoring"] = {"mode": "user-space polling", "reason": f"BPF layer unavailable: {err}"}
    modes["cpu"] = {"mode": "sched_ext" if caps.sched_ext else ("cgroup weights" if "cpu" in caps.controllers else "none"),
                    "reason": "sched_ext present" if caps.sched_ext else
                    ("kernel lacks sched_ext" + ("" if "cpu" in caps.controllers else "; cpu controller not on cgroup v2"))}
    modes["memory_limits"] = {"mode": "enforced" if "memory" in caps.controllers else "accounting only",
                              "reason": "memory controller on cgroup v2" if "memory" in caps.controllers
                              else "memory controller not available on cgroup v2"}
    try:
        from .gpu import gpu_status
        modes["gpu"] = gpu_status()
    except Exception as err:
        modes["gpu"] = {"mode": "off", "reason": str(err) or type(err).__name__}
    out["modes"] = modes
    sock = os.environ.get("AGENTD_SOCKET", "/run/agentd/agentd.sock")
    try:
        from .api.client import connect
        c = connect(sock, timeout=2)
        hello = c.call("hello")
        out["daemon"] = {"socket": sock, "running": True, "version": hello.get("version")}
    except AgentdError as err:
        out["daemon"] = {"socket": sock, "running": False, "reason": str(err)}
    return out


def doctor(args):
    info = gather(getattr(args, "policy", None))
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
        return 0
    caps = info["capabilities"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    print(f"root user:          {yes(caps['root_user'])}")
    print(f"cgroup v2:          {caps['cgroup2_mount'] or 'not mounted'}")
    print(f"controllers:        {' '.join(caps['controllers']) or '(none on cgroup v2)'}")
    for k in ("psi", "memory_peak", "cgroup_kill", "cgroup_freeze", "btf", "bpf_permitted", "sched_ext",
              "memcg_struct_ops"):
        print(f"{k + ':':<20}{yes(caps[k])}")
    for name, m in info["modes"].items():
        print(f"mode {name + ':':<15}{m.get('mode')} ({m.get('reason', '')})")
    p = info["policy"]
    print(f"policy:             {p['name']}: {'ok' if p['ok'] else 'INVALID: ' + p['error']}")
    d = info["daemon"]
    print(f"daemon:             {'running, ' + str(d.get('version')) if d['running'] else 'not running (' + d['reason'] + ')'}")
    for w in info["warnings"]:
        print(f"warning: {w}")
    return 0
