"""Egress limits: the policy's `network` rates written for agents and tool calls.

One BPF program on agentd's root (agentd/kernel/bpf_egress.py) and a qdisc on each device
the policy names (agentd/kernel/qdisc.py): fq where the kernel has it (the program stamps
departure times), else htb (the program picks a class; agentd/network/htb.py lays the
classes out). Where the program cannot load (no BPF, no cgroup_skb), or the policy asks
for it, nftables rules pick the htb class instead (agentd/kernel/nft.py: mode nft). An
agent's rate bounds everything it runs; a tool call's rate bounds that call within it.
"""

import logging
import time

from ..errors import AgentdError, BpfError, FeatureMissing, KernelError
from ..kernel import nft, qdisc
from ..kernel.bpf_egress import Egress, cgroup_level
from ..stages import Stage
from . import htb

log = logging.getLogger("agentd.network")

COUNTERS = ("bytes", "packets", "delayed", "drops", "overlimits")
NFT = "nft"                  # the mode where nftables rules, not the BPF program, pick the class
# A call's socket may still hold data when its last process exits (the kernel sends a
# closed socket's buffer, up to tcp_wmem's 4 MiB): its entry and class stay this long, so
# what it left is still sent at its rate, not at line rate.
LINGER_S = 30.0


class EgressStage(Stage):
    """`egress` (or `program`, which makes it), `device` and `classifier` are the kernel
    adapters (tests pass doubles)."""

    name = "network"

    def __init__(self, app, egress=None, device=qdisc.Device, clock=time.monotonic, program=Egress,
                 classifier=nft.Classifier):
        self.app = app
        self.clock = clock
        self.ending = []          # (when, cgroup): entries to clear once their linger is over
        cfg = app.policy.network
        self.egress = egress      # the BPF program's adapter, or in nft mode the nftables one
        self.devices = []
        self.why = "policy asks nft" if cfg.mode == NFT else None
        if egress is None and cfg.mode != NFT:
            try:
                self.egress = program(app.fs.path(app.root), app.root)
            except (BpfError, FeatureMissing, KernelError) as err:
                if cfg.mode != "auto":
                    raise FeatureMissing(f"the egress program cannot load ({err}); network.mode {cfg.mode} needs "
                                         "it (mode auto or nft limit egress without BPF)") from err
                self.why = f"the egress program cannot load ({err})"
                log.warning("%s: egress limits fall back to nftables rules (socket cgroupv2) and htb classes",
                            self.why)
        bpf = self.egress is not None
        qmode = (None if cfg.mode == "auto" else cfg.mode) if bpf else qdisc.HTB
        try:
            for name in cfg.devices:
                self.devices.append(device(name, mode=qmode))
            if not bpf:
                self.egress = classifier(cfg.devices)
        except KernelError as err:
            self.close()
            if bpf:
                raise
            raise FeatureMissing(f"{self.why}, and nftables cannot stand in: {err}") from err
        modes = {d.mode for d in self.devices}
        if len(modes) > 1:
            self.close()
            raise KernelError(f"egress devices ended up in different modes ({sorted(modes)}): set network.mode")
        self.mode = modes.pop() if bpf else NFT
        self.minors = htb.Minors()
        self.classes = {}         # cgroup -> [HtbClass] (htb and nft modes)
        self.ids = {}             # cgroup -> (cgroup id, agent id)
        self.sent = {}            # agent id -> counters of its cgroups that are gone (counters only grow)
        self.live = set()         # agents running (metrics are theirs only)
        self.leaf_warned = False
        log.info("egress limits on %s (%s mode)", ", ".join(cfg.devices), self.mode)

    # --- what the policy says ------------------------------------------------------------
    def _policy(self, agent):
        return getattr(agent, "view", None) or self.app.policy

    def _agent_limit(self, agent):
        try:
            net = self._policy(agent).agent_class(agent.agent_class).network
        except AgentdError:
            return None
        return (net.egress, net.burst) if net.egress else None

    def _tool_limit(self, agent, tool):
        try:
            net = self._policy(agent).tool_class(tool.plan.tool_class).network
        except AgentdError:
            return None
        return (net.egress, net.burst) if net.egress else None

    # --- stage hooks -------------------------------------------------------------------
    def on_agent_start(self, agent):
        self.live.add(agent.agent_id)
        lim = self._agent_limit(agent)
        if lim is None or self._current(agent.cgroup):
            return
        self._set(agent.agent_id, agent.cgroup, None, lim)

    def _current(self, cg):
        """Does the entry held for path `cg` stand for the cgroup there now? An ended agent
        (or call) of the same name may still linger under that path: the kernel's cgroup
        id, not the name its creator chose, tells them apart."""
        ent = self.ids.get(cg)
        if ent is None:
            return False
        try:
            return ent[0] == self.app.fs.cgroup_id(cg)
        except AgentdError:
            return False

    def on_tool_start(self, agent, tool):
        self._expire()
        if not self._current(agent.cgroup):
            self.on_agent_start(agent)
        lim = self._tool_limit(agent, tool)
        if lim is not None:
            self._set(agent.agent_id, tool.cgroup, agent.cgroup, lim, tool.cgroup_id)

    def on_tool_end(self, agent, tool, result):
        self._expire()
        if tool.cgroup in self.ids:
            self.ending.append((self.clock() + LINGER_S, tool.cgroup))

    def on_sample(self, snapshot):
        # The daemon's tick: lingering entries go on time while no call starts or ends
        # (here, on the daemon's loop; never on a metrics scrape's thread).
        self._expire()

    def _expire(self, everything=False):
        now = self.clock()
        keep = []
        for when, cg in self.ending:
            if not everything and when > now:
                keep.append((when, cg))
            elif not everything and self._populated(cg):
                # Processes the call left behind (`stragglers: wait`, a dry run, a container
                # runtime at its agent's end) still run in it: its rate holds them as long as
                # they run. What decides is the kernel's cgroup.events, not the call's end.
                keep.append((now + LINGER_S, cg))
            else:
                self._clear(cg)
        self.ending = keep

    def _populated(self, cg):
        try:
            return self.app.fs.populated(cg)
        except AgentdError:               # gone (CgroupGone) or unreadable: nothing runs there
            return False

    def on_agent_end(self, agent):
        # Its cgroups linger as its calls' do: its last processes' sockets may still hold data.
        self.live.discard(agent.agent_id)
        self.sent.pop(agent.agent_id, None)
        lingering = {cg for _, cg in self.ending}
        mine = [c for c in self.ids if c == agent.cgroup or c.startswith(agent.cgroup + "/")]
        # Calls before their agent: an htb group goes after the classes below it.
        for cg in sorted(mine, key=lambda c: -c.count("/")):
            if cg not in lingering:
                self.ending.append((self.clock() + LINGER_S, cg))

    def _fold(self, agent_id, c):
        if c and agent_id in self.live:
            tot = self.sent.setdefault(agent_id, dict.fromkeys(COUNTERS, 0))
            for k in COUNTERS:
                tot[k] += c.get(k, 0)     # nft mode counts bytes and packets only

    def _set(self, agent_id, cg, agent_cg, lim, cgroup_id=None):
        # What a packet's class rests on: the cgroup the kernel recorded for its socket when
        # the socket was made, and that cgroup's id (its directory's inode, never reused),
        # matched at the level of the agent or call the daemon made; the cgroup directories
        # are root's, so no process of an agent can move itself (or its sockets) out.
        rate, burst = lim
        try:
            cid = cgroup_id if cgroup_id is not None else self.app.fs.cgroup_id(cg)
            old = self.ids.get(cg)
            if old is not None and old[0] != cid:
                # The lingering entry of an ended cgroup of the same name: it goes now, and
                # its expiry with it (which would otherwise clear the new cgroup's entry).
                self.ending = [(when, c) for when, c in self.ending if c != cg]
                self._clear(cg)
            if self.mode == qdisc.FQ:
                self.egress.set(cid, rate, burst)
            else:
                if agent_cg is None:
                    made = list(htb.agent_classes(self.minors, rate, burst))
                else:
                    group = (self.classes.get(agent_cg) or [None])[0]
                    made = [htb.tool_class(self.minors, rate, burst, group)]
                self.classes[cg] = made
                classid = None
                for c in made:
                    for d in self.devices:
                        classid = d.set_class(c.minor, c.rate, c.burst, parent_minor=c.parent,
                                              ceil_bytes_per_s=c.ceil, leaf=c.leaf)
                self._warn_leaf()
                if self.mode == NFT:
                    # The rule matches the cgroup's ancestor at its own level: it and all below it.
                    self.egress.set(cid, cgroup_level(cg), classid)
                else:
                    self.egress.set(cid, classid=classid)
            self.ids[cg] = (cid, agent_id)
        except (AgentdError, OverflowError) as err:
            log.warning("%s: egress limit not set: %s", cg, err)

    def _warn_leaf(self):
        if self.leaf_warned or not self.devices or self.devices[0].leaf_kind is not None:
            return
        self.leaf_warned = True
        log.warning("the kernel has none of the %s qdiscs: each htb class queues in htb's default pfifo "
                    "(the flows of one agent or call share a plain FIFO, without flow fairness)",
                    " and ".join(qdisc.LEAF_KINDS))

    def _clear(self, cg):
        ent = self.ids.pop(cg, None)
        if ent is None:
            return
        try:
            # Its classes' drops and overlimits go with them: kept in its agent's counters.
            self._fold(ent[1], self._with_classes(self.egress.counters(ent[0]), cg, self._class_stats()))
            self.egress.clear(ent[0])
        except AgentdError as err:
            log.debug("%s: egress entry not cleared: %s", cg, err)
        for c in reversed(self.classes.pop(cg, [])):
            for d in self.devices:
                try:
                    d.remove_class(c.minor)
                except KernelError as err:
                    log.debug("%s: htb class %x not removed: %s", cg, c.minor, err)
            self.minors.release(c.minor)

    async def stop(self):
        self.close()

    def close(self):
        """The link goes with the object (the kernel detaches the program); the devices get
        the kernel's default qdisc back."""
        egress, self.egress = getattr(self, "egress", None), None
        if egress is not None:
            egress.close()
        for d in getattr(self, "devices", []):
            try:
                d.release()
            except KernelError as err:
                log.warning("%s: %s", d.ifname, err)
        self.devices = []

    # --- reporting ---------------------------------------------------------------------
    def modes(self):
        return {"network": self.mode}

    def mode_details(self):
        out = {"devices": [d.ifname for d in self.devices], "mode": self.mode}
        if self.mode != qdisc.FQ and self.devices and self.classes:
            out["leaf_qdisc"] = self.devices[0].leaf_kind or "pfifo"
        if self.why:
            out["reason"] = self.why
        return {"network": out}

    def _class_stats(self):
        """[{minor: {'drops', 'overlimits'}}] per device (htb and nft modes; fq mode: [])."""
        if self.mode == qdisc.FQ:
            return []
        out = []
        for d in self.devices:
            try:
                out.append(d.class_stats())
            except KernelError as err:
                log.debug("%s: htb class stats not read: %s", d.ifname, err)
        return out

    def _with_classes(self, c, cg, stats):
        """The counters `c` of cgroup `cg` (BPF entry or nftables rule) with its htb classes'
        drops and overlimits, summed over the devices: in the htb and nft modes htb, not
        the program, holds packets back and drops them."""
        if c is None or not stats:
            return c
        c = dict(c)
        for cls in self.classes.get(cg, ()):
            for per_dev in stats:
                st = per_dev.get(cls.minor)
                if st:
                    c["drops"] = c.get("drops", 0) + st["drops"]
                    c["overlimits"] = c.get("overlimits", 0) + st["overlimits"]
        return c

    def metric_stats(self):
        """Per agent: what its limited cgroups sent, were delayed and dropped (the BPF
        program's or the nftables rules' counters; in the htb and nft modes the drops and
        overlimits of their htb classes)."""
        if self.egress is None:
            return {}
        # Called on the metrics server's thread (any local user may scrape): it reads a
        # copy and changes nothing; the daemon's loop alone expires entries.
        per = {a: dict(c) for a, c in list(self.sent.items())}
        stats = self._class_stats() if self.classes else []
        for cg, (cid, agent_id) in list(self.ids.items()):
            if agent_id not in self.live:
                continue
            try:
                c = self._with_classes(self.egress.counters(cid), cg, stats)
            except AgentdError:
                continue
            if c is None:
                continue
            tot = per.setdefault(agent_id, dict.fromkeys(COUNTERS, 0))
            for k in COUNTERS:
                tot[k] += c.get(k, 0)
        return {"network_egress": per}
