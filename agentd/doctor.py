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
        from .kernel.blkio import resolve
        from .policy.loader import load_policy
        load_policy(policy_name or "default", block_device=resolve)
        out["policy"] = {"name": policy_name or "default", "ok": True}
    except AgentdError as err:
        out["policy"] = {"name": policy_name or "default", "ok": False, "error": str(err)}
    modes = {}
    try:
        from .monitor import bpf_status
        modes["monitoring"] = bpf_status()
    except Exception as err:      # the BPF layer is optional: say why it is off
        modes["monitoring"] = {"mode": "user-space polling", "reason": f"BPF layer unavailable: {err}"}
    # Same vocabulary as the CPU-priority stage (agentd/sched): what the daemon would run here.
    try:
        from .policy.loader import load_policy as _lp
        wanted = _lp(policy_name or "default").cpu.scheduler
    except Exception:
        wanted = "auto"
    if caps.sched_ext and wanted in ("auto", "sched_ext"):
        modes["cpu"] = {"mode": "sched_ext", "reason": "the kernel has sched_ext"}
    elif "cpu" in caps.controllers and wanted != "none":
        modes["cpu"] = {"mode": "cpu_weight", "reason": "no sched_ext" if not caps.sched_ext else f"policy asks {wanted}"}
    elif wanted != "none":
        modes["cpu"] = {"mode": "nice", "reason": "no sched_ext and no cpu controller on cgroup v2"}
    else:
        modes["cpu"] = {"mode": "none", "reason": "policy cpu.scheduler is none"}
    modes["memory_limits"] = {"mode": "enforced" if "memory" in caps.controllers else "accounting only",
                              "reason": "memory controller on cgroup v2" if "memory" in caps.controllers
                              else "memory controller not available on cgroup v2"}
    modes["network"] = _network_mode(policy_name, caps)
    modes["io"] = _io_mode(policy_name, caps)
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


def _network_mode(policy_name, caps):
    """What the egress stage (agentd/network) would run here, and why."""
    try:
        from .policy.loader import load_policy
        net = load_policy(policy_name or "default").network
    except Exception:
        return {"mode": "off", "reason": "the policy does not load"}
    if not net.devices:
        return {"mode": "off", "reason": "the policy names no device (network.devices)"}
    from .kernel.qdisc import kernel_has_qdisc
    devs = ", ".join(net.devices)
    if net.mode == "nft" or not caps.bpf_permitted:
        why = "policy asks nft" if net.mode == "nft" else "this process may not load BPF (cgroup_skb)"
        if net.mode in ("fq", "htb"):
            return {"mode": "off", "reason": f"policy asks {net.mode}, which needs BPF: {why}"}
        from .kernel import nft
        err = nft.probe()
        if err is not None:
            return {"mode": "off", "reason": f"{why}, and nftables cannot stand in: {err}"}
        if not kernel_has_qdisc("htb"):
            return {"mode": "off", "reason": f"{why}; nftables would mark htb classes and the kernel has no htb"}
        return {"mode": "nft", "reason": f"{why}; nftables rules (socket cgroupv2) mark htb classes on {devs}"}
    if net.mode in ("auto", "fq") and kernel_has_qdisc("fq"):
        return {"mode": "fq", "reason": f"departure times per packet, fq on {devs}"}
    if net.mode == "fq":
        return {"mode": "off", "reason": "policy asks fq and the kernel has no fq qdisc (CONFIG_NET_SCH_FQ)"}
    if kernel_has_qdisc("htb"):
        why = "policy asks htb" if net.mode == "htb" else "the kernel has no fq qdisc"
        return {"mode": "htb", "reason": f"{why}; htb classes on {devs}"}
    return {"mode": "off", "reason": "the kernel has neither the fq nor the htb qdisc"}


def _io_mode(policy_name, caps):
    """What the disk stage (agentd/disk) would do here, and why."""
    from .kernel import blkio
    try:
        from .disk.plan import asks_io
        from .policy.loader import load_policy
        policy = load_policy(policy_name or "default")
    except Exception:
        return {"mode": "off", "reason": "the policy does not load"}
    if not asks_io(policy):
        return {"mode": "off", "reason": "the policy sets no io weight or maximum"}
    if "io" not in caps.controllers:
        return {"mode": "off", "reason": "no io controller on cgroup v2 (bound to cgroup v1 or not built)"}
    disks = []
    from .kernel.cgroupfs import CgroupFS
    fs = CgroupFS(caps.cgroup2_mount)
    for spec in policy.io.devices:
        try:
            d = blkio.resolve(spec)
        except Exception as err:
            disks.append(f"{spec}: {err}")
            continue
        how = blkio.weight_mode(fs, d.dev)
        if how == "none":
            how = "iocost to be turned on" if policy.io.enable_iocost else "weights do not count"
        disks.append(f"{spec} = {d.name} {d.dev} (io.max; weights: {how})")
    where = "; ".join(disks) if disks else "no disk named (io.devices): weights only, where iocost or bfq runs"
    return {"mode": "io.max" if policy.io.devices else "weights", "reason": where}


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
