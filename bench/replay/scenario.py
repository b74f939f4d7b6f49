"""The two scenarios of the replay benchmark, run inside the kernel-tier VM.

Isolation: triples of traces drawn in `spiky_order` (triple k = traces 3k, 3k+1, 3k+2; the
first is the HIGH agent, the other two LOW). Every trace first runs alone (solo) once per
mode family: "plain" (a bare cgroup, no limit: the solo of none and static) and "agentd"
(alone under a daemon, no budget). Budget = 0.85 x the sum of the three plain solo peaks
(memory.peak of each agent's cgroup). The agents line up their largest tool calls, the worst
case for sharing, by construction: before its largest call each agent waits at a barrier
until the others reach theirs (or have ended) and then until its largest step is due with
theirs (the trace's offsets); then each of those calls, once it holds its
largest step, holds it at a second barrier until all three are there (or runner.HOLD_TIMEOUT_S
passed: a call that agentd keeps waiting at its start never comes). Both waits are reported and
not counted in completion times. The lined-up peaks exceed the budget, so with no control an
agent is lost in every run; the benchmark checks that (`none_lost_every_run`).

Density: agents drawn in the same order, all of class low, all started together, under a
fixed budget; n grows from 1 until a run loses an agent or its median slowdown exceeds
1.25x; the mode's figure is the largest n that passed. Beside each step: the trace-level
bounds (trace.density_bounds) and how busy the guest's CPUs were.

Slowdown is against the same trace's solo run in the same mode family; agentd's rows also
give it against the plain solo (`slowdown_vs_plain`) and agentd's solo cost (`solo_ratio`).
"""

import statistics
import tempfile
import time

from agentd.kernel.cgroupfs import CgroupFS
from .runner import AgentdHost, AgentSpec, Group, cgroup_root
from .trace import build_schedule, density_bounds, peak_offset, scale, spiky_order

ISOLATION_FACTOR = 0.85
DENSITY_SLOWDOWN = 1.25


def family(mode):
    return "agentd" if mode == "agentd" else "plain"


class Bench:
    def __init__(self, traces, speed, mem_scale, work_dir, exe, alias, log, timeout_factor=3.0):
        self.traces = spiky_order(traces)
        self.speed, self.mem_scale = speed, mem_scale
        self.work_dir, self.exe, self.alias, self.log = work_dir, exe, alias, log
        self.timeout_factor = timeout_factor
        self.schedules = {t.name: scale(build_schedule(t), speed, mem_scale) for t in self.traces}
        self.solo = {}          # (trace, family) -> AgentResult
        self.host = None        # the AgentdHost, started on the first agentd run
        self.host_start_seconds = None
        self.checkpoint = lambda scenario, partial: None    # called after every run
        # One tool-call history across the benchmark (solo runs first, as on a host that has
        # seen these agents before); in the guest's /tmp: SQLite's WAL does not work over 9p.
        self.state_dir = tempfile.mkdtemp(prefix="agentd-replay-state-")

    def _timeout(self, specs):
        # Every tool call costs seconds of process start-up in the emulated guest (more
        # through agentd's Python daemon), on top of the schedule itself.
        return max((s.delay + s.schedule.duration) * self.timeout_factor + 10 * len(s.schedule.calls)
                   for s in specs) + 120

    def _group(self, mode, specs, budget):
        """Run `specs` as one group: ([AgentResult], the group's combined memory peak); the
        group's CPU use is left in self.last_cpu."""
        t0 = time.monotonic()
        host = None
        if mode == "agentd":
            if self.host is None:
                self.host = AgentdHost(CgroupFS(cgroup_root()), self.work_dir, self.state_dir, self.log).start()
            host = self.host
        g = Group(mode, specs, budget, self.work_dir, self.exe, self.alias, host=host, log=self.log)
        res = g.run(self._timeout(specs))
        self.last_cpu = g.cpu.summary()
        peak = f", peak {fmt_mib(g.group_peak)}" if g.group_peak else ""
        if self.last_cpu:
            peak += f", CPUs busy {self.last_cpu['mean']:.0%} (p95 {self.last_cpu['p95'] or 0:.0%})"
        self.log(f"  {mode}: {len(specs)} agent(s), budget {fmt_mib(budget)}{peak}: "
                 + ", ".join(f"{r.trace}={'%.1fs' % r.seconds if r.completed else 'LOST'}" for r in res)
                 + f" ({time.monotonic() - t0:.0f} s)")
        self.last_zram = g.zram_peak
        return res, g.group_peak

    def solo_run(self, name, fam, priority="low"):
        key = (name, fam)
        if key not in self.solo:
            spec = AgentSpec(name="solo", trace=name, priority=priority, schedule=self.schedules[name],
                             measure_latency=priority == "high")
            self.log(f"solo {name} ({fam})")
            self.solo[key] = self._group("agentd" if fam == "agentd" else "none", [spec], None)[0][0]
        return self.solo[key]

    def _agent_row(self, r, fam):
        solo = self.solo.get((r.trace, fam))
        solo_s = solo.seconds if solo and solo.completed else None
        row = {"trace": r.trace, "priority": r.priority, "lost": not r.completed, "lost_reason": r.lost_reason,
               "solo_seconds": rnd(solo_s), "seconds": rnd(r.seconds),
               "slowdown": rnd(r.seconds / solo_s) if r.seconds and solo_s else None,
               "tool_calls": {"planned": r.calls_planned, "started": r.calls, "killed": r.calls_killed, "failed": r.calls_failed,
                              "killed_by_agentd": r.actions.get("kill", 0), "frozen": r.actions.get("freeze", 0),
                              "throttled": r.actions.get("throttle", 0), "queued": r.actions.get("queue", 0)},
               "peak_bytes": r.peak_bytes}
        if fam == "agentd":
            # agentd's own cost: its solo against the plain solo, and the slowdown against
            # the plain solo (what an agent feels against running with no agentd at all).
            plain = self.solo.get((r.trace, "plain"))
            plain_s = plain.seconds if plain and plain.completed else None
            row["solo_ratio"] = rnd(solo_s / plain_s) if solo_s and plain_s else None
            row["slowdown_vs_plain"] = rnd(r.seconds / plain_s) if r.seconds and plain_s else None
            # Where an agent's extra time went: paused by the ladder, held in admission,
            # and its calls' own running time against the solo run's.
            row["time_s"] = {"frozen": r.frozen_s, "queued": r.queued_s, "calls": r.calls_s,
                             "solo_calls": solo.calls_s if solo else None}
        if r.latencies_us:
            row["alloc_latency_us"] = percentiles(r.latencies_us)
            row["alloc_chunks"] = len(r.latencies_us)
        return row

    def close(self):
        if self.host is not None:
            self.host_start_seconds = self.host.start_seconds
            self.host.stop()
            self.host = None

    # --- A. isolation ----------------------------------------------------------------
    def isolation(self, modes, triples, runs, first=0):
        if len(self.traces) < 3 * (first + triples):
            raise SystemExit(f"isolation needs {3 * (first + triples)} traces, the folder has {len(self.traces)}")
        out = {"triples": [], "modes": {m: {"runs": []} for m in modes}}
        for k in range(first, first + triples):
            names = [t.name for t in self.traces[3 * k:3 * k + 3]]
            prio = ["high", "low", "low"]
            fams = sorted({family(m) for m in modes} | {"plain"})
            for fam in fams:
                for n, p in zip(names, prio):
                    self.solo_run(n, fam, p)
            peaks = [self.solo[(n, "plain")].peak_bytes or self.schedules[n].peak for n in names]
            budget = int(ISOLATION_FACTOR * sum(peaks))
            out["triples"].append({"traces": names, "priorities": prio, "solo_peaks": peaks, "budget": budget})
            self.log(f"triple {k}: {names}, solo peaks {[fmt_mib(p) for p in peaks]}, budget {fmt_mib(budget)}")
            # After the start barrier each agent waits until its largest step is due with the
            # others' (by the trace's offsets); the hold at the peak absorbs the touch time.
            offs = [peak_offset(self.schedules[n].calls[self.schedules[n].peak_call])
                    if self.schedules[n].calls else 0.0 for n in names]
            for mode in modes:
                for r in range(runs):
                    specs = [AgentSpec(name=f"a{i}", trace=n, priority=p, schedule=self.schedules[n],
                                       measure_latency=p == "high", barrier=len(names),
                                       barrier_extra=max(offs) - offs[i])
                             for i, (n, p) in enumerate(zip(names, prio))]
                    res, group_peak = self._group(mode, specs, budget)
                    out["modes"][mode]["runs"].append({
                        "triple": k, "run": r, "budget": budget,
                        # the most the three held at once (memory.peak of their parent)
                        "group_peak_bytes": group_peak,
                        # seconds each agent waited for the others at its largest call
                        "barrier_waits_s": [rnd(x.sync_wait) for x in res],
                        "cpu_busy": self.last_cpu, "zram_peak_bytes": self.last_zram,
                        "agents": [self._agent_row(x, family(mode)) for x in res]})
                    out["solo"] = self._solo_table()
                    self.checkpoint("isolation", out)
        if "none" in out["modes"]:
            # The line-up holds the peaks together above the budget: with no control an
            # agent must be lost in every run, or the scenario did not test sharing.
            runs_ = out["modes"]["none"]["runs"]
            out["none_lost_every_run"] = bool(runs_) and all(any(a["lost"] for a in r["agents"]) for r in runs_)
        out["solo"] = self._solo_table()
        return out

    def _solo_table(self):
        return {f"{n}|{fam}": {"seconds": rnd(r.seconds), "peak_bytes": r.peak_bytes, "lost": not r.completed,
                               **({"alloc_latency_us": percentiles(r.latencies_us)} if r.latencies_us else {})}
                for (n, fam), r in self.solo.items()}

    # --- B. density ------------------------------------------------------------------
    def density(self, modes, budget, max_agents):
        names = [t.name for t in self.traces[:max_agents]]
        bounds = density_bounds([self.schedules[n] for n in names], budget)
        out = {"budget": budget, "order": names, "max_agents": max_agents, "bounds": bounds, "modes": {}}
        self.log(f"density bounds at {fmt_mib(budget)}: no-collision {bounds['no_collision']}, "
                 f"spike beside baselines {bounds['spike_beside_baselines']}, fluid {bounds['fluid']}")
        for mode in modes:
            fam = family(mode)
            steps, best = [], 0
            for n in range(1, len(names) + 1):
                for name in names[:n]:
                    self.solo_run(name, "plain")
                    self.solo_run(name, fam)
                specs = [AgentSpec(name=f"a{i}", trace=x, priority="low", schedule=self.schedules[x])
                         for i, x in enumerate(names[:n])]
                rows = [self._agent_row(x, fam) for x in self._group(mode, specs, budget)[0]]
                lost = sum(r["lost"] for r in rows)
                slow = [r["slowdown"] for r in rows if r["slowdown"] is not None]
                med = statistics.median(slow) if slow else None
                ok = lost == 0 and med is not None and med <= DENSITY_SLOWDOWN
                vs_plain = [r["slowdown_vs_plain"] for r in rows if r.get("slowdown_vs_plain") is not None]
                steps.append({"agents": n, "lost": lost, "median_slowdown": rnd(med), "ok": ok,
                              "median_slowdown_vs_plain": rnd(statistics.median(vs_plain)) if vs_plain else None,
                              "calls_killed": sum(r["tool_calls"]["killed"] for r in rows),
                              "cpu_busy": self.last_cpu, "zram_peak_bytes": self.last_zram, "bounds": bounds["steps"][n - 1], "per_agent": rows})
                out["modes"][mode] = {"agents": best if not ok else n, "steps": steps}
                self.checkpoint("density", out)
                if not ok:
                    break
                best = n
            out["modes"][mode] = {"agents": best, "steps": steps}
        out["solo"] = self._solo_table()
        return out


def percentiles(xs):
    xs = sorted(xs)
    if not xs:
        return None

    def q(p):
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 1)
    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)}


def rnd(x, nd=3):
    return None if x is None else round(x, nd)


def fmt_mib(b):
    return "unlimited" if not b else f"{b / 2**20:.0f} MiB"
