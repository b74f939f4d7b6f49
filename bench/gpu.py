#!/usr/bin/env python3
"""GPU contention between agents: agentd's priority placement vs first-come-first-served.

    python3 bench/gpu.py [--seeds 5] [--hours 2] [--gpus 1] [--json FILE]

A discrete-event simulation (needs no GPU, no root, runs in seconds). Agents issue GPU tool
calls drawn from the traces below; a scheduler decides, whenever a call arrives or one ends,
which calls start on which GPU. The GPU side goes through agentd's own code: the devices and
the memory each running call holds are scripted into `agentd.gpu.fake.FakeNvml` and read back
through the NVML adapter (`agentd.gpu.nvml.Nvml`), forecasts come from agentd's GPU history
(`agentd.gpu.history.GpuForecasts`, learning each call's peak as it ends), and decisions come
from `agentd.gpu.placement.place()`. Schedulers:

  fcfs         one queue in arrival order; the head starts when a GPU has room for its
               forecast, nothing overtakes it (what a shared GPU box without agentd does
               at best; without any queue, calls would simply fail with out-of-memory)
  agentd-wait  agentd's priorities (agent GPU priority, then tool priority), every call waits
  agentd       agentd's priorities and each class's fallback: calls whose class says
               `offload` run on the CPU at once when no GPU has room (slower, see below)

Traces (per agent, Poisson arrivals over the window; sizes and times uniform in ranges;
rates per agent-hour: eval 10, fine-tune 3, test suite 6, which asks ~70% of one 80 GiB
GPU's memory-time, so queues form whenever large calls coincide):

  agent class (GPU prio) | tool call          | GPU memory | GPU time | CPU slowdown | fallback
  interactive (800) x2   | eval / inference   | 8-16 GiB   | 20-90 s  | x10          | wait
  batch (100) x4         | fine-tune script   | 24-40 GiB  | 3-10 min | x6           | wait
  batch (100) x4         | GPU test suite     | 6-12 GiB   | 1-4 min  | x3           | offload

A call offloaded to the CPU takes its GPU time x its CPU slowdown (the host's cores are not
modelled as contended: offloaded calls are few and the slowdowns are already large).
Reported per scheduler, means over the seeds: completion time (arrival -> end) of the
high-priority calls (mean, p95), of all calls, the makespan (last call's end), throughput
(calls per hour over the makespan), calls offloaded, and the NVML reads made.
"""

import argparse
import json
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentd.forecast import HistoryStore  # noqa: E402
from agentd.gpu import placement as pl  # noqa: E402
from agentd.gpu.fake import FakeNvml  # noqa: E402
from agentd.gpu.history import GpuForecasts  # noqa: E402
from agentd.gpu.nvml import Nvml  # noqa: E402

GiB = 1 << 30
GPU_MEMORY = 80 * GiB

# (agent class, GPU priority, agents, tool class, tool priority, argv, mem GiB range,
#  GPU seconds range, CPU slowdown, fallback, calls per agent-hour)
KINDS = [
    ("interactive", 800, 2, "eval", 60, ["python", "eval.py"], (8, 16), (20, 90), 10.0, pl.WAIT, 10),
    ("batch", 100, 4, "finetune", 30, ["python", "finetune.py"], (24, 40), (180, 600), 6.0, pl.WAIT, 3),
    ("batch", 100, 4, "gputest", 20, ["pytest", "tests/gpu"], (6, 12), (60, 240), 3.0, pl.OFFLOAD, 6),
]


def trace(seed, hours):
    rng = random.Random(seed)
    calls = []
    for cls, gprio, n_agents, tcls, tprio, argv, mem, secs, slow, fallback, rate in KINDS:
        for a in range(n_agents):
            t = rng.expovariate(rate / 3600)
            while t < hours * 3600:
                calls.append({"agent": f"{cls}-{a}", "agent_class": cls, "prio": (gprio, tprio), "tool_class": tcls,
                              "argv": argv, "mem": int(rng.uniform(*mem) * GiB), "gpu_s": rng.uniform(*secs),
                              "slow": slow, "fallback": fallback, "arrival": t})
                t += rng.expovariate(rate / 3600)
    calls.sort(key=lambda c: c["arrival"])
    for i, c in enumerate(calls):
        c["id"] = i
    return calls


def simulate(calls, scheduler, gpus):
    fake = FakeNvml({"driver": "bench", "devices": [{"name": "sim", "uuid": f"GPU-sim-{i}", "memory_total": GPU_MEMORY,
                                                     "processes": []} for i in range(gpus)]})
    nv = Nvml.open(fake)
    fc = GpuForecasts(None, GPU_MEMORY, store=HistoryStore(":memory:"))
    running = {}       # id -> (call, device or None, end time, forecast)
    waiting = []       # calls
    done = []
    arrivals = list(calls)
    now = 0.0
    offloaded = 0

    def start(c, device, forecast):
        nonlocal offloaded
        dur = c["gpu_s"] if device is not None else c["gpu_s"] * c["slow"]
        if device is None:
            offloaded += 1
        else:
            fake.script["devices"][device]["processes"].append({"pid": 10000 + c["id"], "used": c["mem"]})
        running[c["id"]] = (c, device, now + dur, forecast)
        c["start"] = now
        c["device"] = device

    def decide():
        devices = nv.devices()                # what the fake NVML says is held now
        reserved = {}
        for c, dev, _, f in running.values():
            if dev is not None:
                reserved[dev] = reserved.get(dev, 0) + max(0, f - c["mem"])
        rooms = [pl.Room(d.index, d.memory_total, d.memory_used, reserved.get(d.index, 0)) for d in devices]
        reqs = []
        for c in waiting:
            f = min(fc.forecast(c["argv"], c["tool_class"], c["agent"], c["agent_class"]).peak_bytes, GPU_MEMORY)
            c["forecast"] = f
            if scheduler == "fcfs":
                reqs.append(pl.Request(str(c["id"]), c["agent"], (0,), c["id"], f, pl.WAIT))
            elif scheduler == "agentd-wait":
                reqs.append(pl.Request(str(c["id"]), c["agent"], c["prio"], c["id"], f, pl.WAIT))
            else:
                reqs.append(pl.Request(str(c["id"]), c["agent"], c["prio"], c["id"], f, c["fallback"]))
        res = pl.place(reqs, rooms)
        for c in list(waiting):
            p = res[str(c["id"])]
            if p.outcome == pl.WAIT:
                continue
            waiting.remove(c)
            start(c, p.device if p.outcome == pl.GPU else None, c["forecast"])

    while arrivals or running or waiting:
        next_arrival = arrivals[0]["arrival"] if arrivals else float("inf")
        next_end = min((e for _, _, e, _ in running.values()), default=float("inf"))
        if next_end == float("inf") and next_arrival == float("inf"):
            raise RuntimeError(f"{scheduler}: calls wait forever: {[c['id'] for c in waiting]}")
        if next_end <= next_arrival:
            now = next_end
            cid = next(i for i, (_, _, e, _) in running.items() if e == next_end)
            c, dev, _, _ = running.pop(cid)
            if dev is not None:
                procs = fake.script["devices"][dev]["processes"]
                procs[:] = [p for p in procs if p["pid"] != 10000 + cid]
                fc.record(c["argv"], c["tool_class"], c["agent"], c["agent_class"], c["mem"], c["gpu_s"])
            c["end"] = now
            done.append(c)
        else:
            now = next_arrival
            waiting.append(arrivals.pop(0))
        decide()
    fc.close()
    return done, offloaded, fake.calls


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))] if xs else 0.0


def run(seeds, hours, gpus):
    table = {}
    for sched in ("fcfs", "agentd-wait", "agentd"):
        rows = []
        for seed in range(seeds):
            done, offloaded, reads = simulate(trace(seed, hours), sched, gpus)
            hi = [c["end"] - c["arrival"] for c in done if c["prio"][0] >= 800]
            every = [c["end"] - c["arrival"] for c in done]
            makespan = max(c["end"] for c in done)
            rows.append({"calls": len(done), "high_mean_s": statistics.mean(hi), "high_p95_s": p95(hi),
                         "all_mean_s": statistics.mean(every), "makespan_s": makespan,
                         "throughput_per_h": len(done) / (makespan / 3600), "offloaded": offloaded,
                         "nvml_reads": reads})
        table[sched] = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description="GPU tool-call contention: agentd priorities vs FCFS (simulated)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--hours", type=float, default=2.0, help="arrival window per seed")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--json", help="also write the table as JSON here")
    a = ap.parse_args(argv)
    table = run(a.seeds, a.hours, a.gpus)
    print(f"GPU contention, {a.gpus} x {GPU_MEMORY >> 30} GiB GPU, {a.hours:g} h of arrivals, "
          f"means over {a.seeds} seeds")
    cols = [("calls", "calls", "{:.0f}"), ("high_mean_s", "high-prio mean s", "{:.0f}"),
            ("high_p95_s", "high-prio p95 s", "{:.0f}"), ("all_mean_s", "all mean s", "{:.0f}"),
            ("makespan_s", "makespan s", "{:.0f}"), ("throughput_per_h", "calls/h", "{:.1f}"),
            ("offloaded", "offloaded", "{:.1f}")]
    print("| scheduler | " + " | ".join(h for _, h, _ in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for sched, row in table.items():
        print(f"| {sched} | " + " | ".join(f.format(row[k]) for k, _, f in cols) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
