#!/usr/bin/env python3
"""agentd reliability and security: try hard to break each promise, write a table.

Promises: an agent is never lost because of agentd; a tool call is never leaked (no
orphan cgroup, process or fd); no process acts on another agent's resources; bad input
gets a clear error and changes nothing; no agent or local user degrades another agent by
more than a bounded amount (bench/trust.py: the attack suite, DoS bounds, a full disk).

    python3 bench/reliability.py [--quick] [--skip-attacks] [--out bench/RELIABILITY.md]

Runs on the host (root, cgroup v2). Each row: promise, test, inputs tried, failures, result.
`--quick` (under a minute) is run by the test suite (tests/host/test_reliability_quick.py),
which runs the attack tests itself (--skip-attacks) and judges behaviour, not timing.
"""

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tests.helpers import DaemonProc, agentd_cmd, kill_tree  # noqa: E402

from agentd.kernel.cgroupfs import CgroupFS, find_cgroup2_mount  # noqa: E402

ROWS = []


T0 = time.monotonic()


def row(promise, test, inputs, failures, note="", result=None):
    ROWS.append((promise, test, inputs, failures, result or ("pass" if failures == 0 else "FAIL"), note))
    print(f"  [{time.monotonic() - T0:5.0f} s] {test}: {inputs} inputs, {failures} failures {note}", file=sys.stderr,
          flush=True)


# --- bad input: fuzzers ---------------------------------------------------------------
def fuzz_api_parser(n):
    from hypothesis import HealthCheck, given, settings, strategies as st
    from agentd.api import protocol
    from agentd.errors import RequestError
    failures = []
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=40))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                          max_leaves=12)
    ops = st.sampled_from(sorted(protocol.SCHEMA) + ["", "x", "run", "__init__"])
    keys = st.sampled_from(["pid", "argv", "class", "mem", "intent", "cwd", "agent", "tool", "status", "name",
                            "policy", "wall_s", "maxrss_kb", "v", "op", "zzz"])
    reqs = st.fixed_dictionaries({"v": st.one_of(st.just(1), values), "op": ops},
                                 optional={k: values for k in ("pid", "argv", "agent", "tool", "status")}) \
        .flatmap(lambda d: st.dictionaries(keys, values, max_size=5).map(lambda extra: {**d, **extra}))
    raw = st.one_of(reqs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200))
    count = [0]

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(raw)
    def run(data):
        count[0] += 1
        try:
            protocol.parse_request(data)
        except RequestError as err:
            if not err.code or not str(err):
                failures.append(("empty error", data))
        except Exception as err:      # anything else is a crash
            failures.append((repr(err), data))

    run()
    row("bad input", "API request parser (hypothesis)", count[0], len(failures),
        f"e.g. {failures[0]}" if failures else "")


def fuzz_policy_loader(n):
    import yaml
    from hypothesis import HealthCheck, given, settings, strategies as st
    from agentd.errors import PolicyError
    from agentd.policy.loader import load_policy_text
    base = yaml.safe_load(open(os.path.join(REPO, "policies", "multi-tenant.yaml")))
    failures = []
    count = [0]
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                       st.sampled_from(["2Gi", "150%", "max", "-1", "1e400", "[", "(?", "batch", "x" * 300, "0%"]),
                       st.text(max_size=12))

    def mutate(doc, rnd, depth=0):
        if isinstance(doc, dict) and doc:
            doc = dict(doc)
            k = rnd.choice(list(doc))
            r = rnd.random()
            if r < 0.3:
                del doc[k]
            elif r < 0.5:
                doc[k + rnd.choice(["", "x", "_"])] = doc.get(k)
            else:
                doc[k] = mutate(doc[k], rnd, depth + 1)
            return doc
        if isinstance(doc, list) and doc:
            doc = list(doc)
            i = rnd.randrange(len(doc))
            doc[i] = mutate(doc[i], rnd, depth + 1)
            return doc
        return None

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 2**32), leaves, st.booleans(), st.text(max_size=60))
    def run(seed, leaf, as_text, junk):
        count[0] += 1
        rnd = random.Random(seed)
        doc = base
        for _ in range(rnd.randint(1, 4)):
            doc = mutate(doc, rnd)
            if doc is None:
                doc = leaf
                break
        text = junk if as_text else yaml.safe_dump(doc)
        try:
            load_policy_text(text, "fuzz.yaml", host_memory_bytes=16 << 30)
        except PolicyError as err:
            if not err.problems or any(":" not in str(p) for p in err.problems):
                failures.append(("unlocated error", text[:200]))
        except Exception as err:
            failures.append((repr(err), text[:200]))

    run()
    row("bad input", "policy loader (hypothesis mutations of a shipped policy)", count[0], len(failures),
        f"e.g. {failures[0]}" if failures else "")


def live_bad_requests(d, n):
    """Malformed lines at a live daemon: each answered, daemon state unchanged."""
    rnd = random.Random(1)
    fs = CgroupFS(find_cgroup2_mount())
    before = fs.children(f"{d.root}/agents")
    fails = 0
    for i in range(n):
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 80))).replace(b"\n", b" ") + b"\n"
        if rnd.random() < 0.5:
            junk = json.dumps({"v": 1, "op": rnd.choice(["tool_start", "freeze", "kill", "run_start", "status"]),
                               "agent": rnd.choice(["../..", "a/b", "x" * 70, "ok"]), "tool": "..",
                               "pid": rnd.choice([1, -1, 2**40, "1"])}).encode() + b"\n"
        r = d.request(None, raw=junk)
        if not r or r.get("ok") is not False or not r["error"].get("message"):
            fails += 1
    after = fs.children(f"{d.root}/agents")
    alive = d.request({"op": "hello"})["ok"]
    row("bad input", "malformed requests at a live daemon", n, fails + (before != after) + (not alive),
        "each answered with an error; no cgroup created; daemon serving")


# --- faults: kill -9 --------------------------------------------------------------------
def kill9_faults(d, rounds, calls=40):
    """kill -9 the daemon at random points while agents create and end tool calls."""
    fs = CgroupFS(find_cgroup2_mount())
    script = 'for i in $(seq %d); do "$@" tool -- sh -c "sleep 0.0$((RANDOM %% 9))"; echo "rc=$?"; done'
    procs = []
    for a in range(4):
        procs.append(subprocess.Popen(agentd_cmd() + ["run", "--name", f"k{a}", "--", "bash", "-c", script % calls,
                                                      "a", *agentd_cmd()],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env))
    rnd = random.Random(7)
    kills = 0
    for _ in range(rounds):
        time.sleep(rnd.uniform(0.05, 0.6))
        if all(p.poll() is not None for p in procs):
            break
        d.kill9()
        kills += 1
        time.sleep(rnd.uniform(0.0, 0.3))
        d.start()
    lost = 0
    bad_rc = 0
    for p in procs:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            lost += 1
        bad_rc += sum(1 for line in out.splitlines() if line.startswith("rc=") and line != "rc=0")
    # A launcher gets a few seconds to report to a restarted daemon (Controller.ORPHAN_GRACE_S);
    # after that and one sweep, nothing may be left.
    deadline = time.monotonic() + 15
    while fs.children(f"{d.root}/agents") and time.monotonic() < deadline:
        time.sleep(0.2)
    left = fs.children(f"{d.root}/agents")
    row("agent never lost", f"kill -9 of the daemon at random points ({kills} kills, 4 agents x {calls} tool calls)",
        4 * calls, lost + bad_rc + len(left),
        f"agents lost {lost}, tool calls with a wrong status {bad_rc}, cgroups left {len(left)}")


# --- load ---------------------------------------------------------------------------------
def daemon_rss_fds(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def load(d, agents, per_agent):
    fs = CgroupFS(find_cgroup2_mount())
    warm = subprocess.run(agentd_cmd() + ["run", "--name", "warm", "--", "bash", "-c",
                                          'for i in $(seq 50); do "$@" tool -- /bin/true; done', "a", *agentd_cmd()],
                          env=d.env, capture_output=True)
    assert warm.returncode == 0, warm.stderr
    rss0, fds0 = daemon_rss_fds(d.proc.pid)
    inner = (f"import subprocess,sys,time\nL=sys.argv[1:]\nts=[]\nfor i in range({per_agent}):\n"
             "    t=time.perf_counter(); r=subprocess.run(L+['tool','--','/bin/true']); ts.append(time.perf_counter()-t)\n"
             "    assert r.returncode==0\nprint(' '.join('%.6f'%x for x in ts))\n")

    def one(i):
        r = subprocess.run(agentd_cmd() + ["run", "--name", f"load{i}", "--", sys.executable, "-c", inner,
                                           *agentd_cmd()], env=d.env, capture_output=True, text=True)
        return r.returncode, [float(x) for x in r.stdout.split()]

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(agents) as ex:
        results = list(ex.map(one, range(agents)))
    wall = time.monotonic() - t0
    time.sleep(2.0)
    rss1, fds1 = daemon_rss_fds(d.proc.pid)
    lat = sorted(x for _, ts in results for x in ts)
    n = len(lat)
    failed = sum(1 for rc, _ in results if rc != 0) + (agents * per_agent - n)
    left = fs.children(f"{d.root}/agents")
    growth = rss1 - rss0
    stray = subprocess.run(["pgrep", "-f", "load[0-9]"], capture_output=True, text=True).stdout.split()
    row("nothing leaked", f"load: {agents} concurrent agents x {per_agent} tool calls", n,
        failed + len(left) + (fds1 > fds0) + (growth > 5 << 20) + len(stray),
        f"{n / wall:.0f} tool calls/s sustained; p50 {lat[n // 2] * 1e3:.1f} ms, p99 {lat[int(n * 0.99)] * 1e3:.1f} ms "
        f"per `agentd tool -- /bin/true` (incl. its own start); daemon RSS growth {growth / 2**20:+.1f} MiB; "
        f"daemon fds {fds0} -> {fds1}; cgroups left {len(left)}")
    return {"rate": n / wall, "p50_ms": lat[n // 2] * 1e3, "p99_ms": lat[int(n * 0.99)] * 1e3}


def auth_tests():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/host/test_api.py"], cwd=REPO, capture_output=True, text=True)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-200:]
    import re
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", last)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", last)) else (0 if r.returncode == 0 else 1)
    row("no one gets in", "authorisation and path-traversal tests (tests/host/test_api.py)", passed + failed, failed,
        last)


def main():
    import trust
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="fewer inputs, for a fast check (timing not judged)")
    ap.add_argument("--skip-attacks", action="store_true",
                    help="do not run the test_attack_* host tests (the test suite runs them itself)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "RELIABILITY.md"))
    args = ap.parse_args()
    q = args.quick
    fs = CgroupFS(find_cgroup2_mount())
    print("fuzzing the API parser ...", file=sys.stderr)
    fuzz_api_parser(1000 if q else 10000)
    print("fuzzing the policy loader ...", file=sys.stderr)
    fuzz_policy_loader(300 if q else 10000)
    tmp = tempfile.mkdtemp(prefix="agentd-rel-")
    root = f"agentd-rel-{os.getpid()}"
    d = DaemonProc(tmp, root).start()
    try:
        print("malformed requests at a live daemon ...", file=sys.stderr)
        live_bad_requests(d, 200 if q else 2000)
        print("hypothesis requests at a live daemon ...", file=sys.stderr)
        trust.live_api_fuzz(row, d, 200 if q else 3000)
        print("load ...", file=sys.stderr)
        load(d, 5 if q else 20, 10 if q else 250)
        print("kill -9 faults ...", file=sys.stderr)
        kill9_faults(d, 3 if q else 25, calls=8 if q else 40)
    finally:
        d.cleanup()
        kill_tree(fs, root)
        shutil.rmtree(tmp, ignore_errors=True)
    if not q:
        print("authorisation tests ...", file=sys.stderr)
        auth_tests()
    if not args.skip_attacks:
        print("attack suite (tests/host/test_trust_*.py) ...", file=sys.stderr)
        trust.attack_suite(row)
    print("DoS bounds ...", file=sys.stderr)
    try:
        dos = trust.dos_bounds(row, f"{root}-dos", 20 if q else 300, judge_timing=not q)
    finally:
        kill_tree(fs, f"{root}-dos")
    print("disk full ...", file=sys.stderr)
    try:
        trust.disk_full(row, f"{root}-full", 5 if q else 20)
    finally:
        kill_tree(fs, f"{root}-full")
    lines = ["# agentd reliability and security results", "",
             "Written by `python3 bench/reliability.py" + (" --quick" if q else "") + "` on "
             + time.strftime("%Y-%m-%d") + "; do not edit by hand.", "",
             "| promise | test | inputs tried | failures found | result | notes |", "|---|---|---:|---:|---|---|"]
    for r in ROWS:
        lines.append("| " + " | ".join(str(x).replace("|", "/").replace("\n", " ") for x in r) + " |")
    lines += ["", "## Another agent's tool calls under attack (same daemon, phases one after another)", "",
              f"Bounds: median within {trust.MEDIAN_RATIO_MAX:g}x the quiet value, p99 under {trust.P99_MAX_MS:g} ms"
              + (" (not judged in --quick)" if q else "") + f", daemon RSS growth under {trust.RSS_GROWTH_MAX >> 20} MiB, "
              f"logs under {trust.LOG_PER_STORM_REQUEST_MAX >> 10} KiB per storm request and "
              f"{trust.LOG_FLOOD_MAX >> 20} MiB per flood. The daemon starts with a soft fd limit of "
              f"{trust.SERVICE_NOFILE} (a systemd service's default); the flood comes from one user in no agent, "
              f"the storm from one agent (tool_start with 100 KB of argv, then tool_done, on two connections).", ""] + dos
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0 if all(r[3] == 0 for r in ROWS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
