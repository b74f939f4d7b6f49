"""bench/reliability.py --quick in the test suite, so bench/RELIABILITY.md cannot go stale
unnoticed: every row it reports must hold on the current tree.

The attack tests (tests/host/test_trust_*.py) run in this same suite, so the quick
mode skips them here; it judges behaviour (answered, nothing leaked, no crash, memory
and logs bounded) and shows the timing bounds without judging them (this machine is
shared and busy; the full run judges them).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_reliability_quick_mode_every_row_holds(tmp_path, cgfs):
    out = tmp_path / "RELIABILITY.md"
    tmp_before = {p for p in os.listdir("/tmp") if p.startswith("agentd-rel-")}
    cg_before = {c for c in cgfs.children("") if c.startswith("agentd-rel-")}
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "reliability.py"), "--quick", "--skip-attacks",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.exists(), r.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| promise")
            and " | " in line and not line.startswith("| condition")]
    main_rows = [ln for ln in rows if ln.count(" | ") >= 5 and ln.split(" | ")[4] in ("pass", "FAIL", "held", "NOT held")]
    assert len(main_rows) >= 10, table          # parser, policy, live x2, load, kill -9, DoS x4, disk full
    bad = [ln for ln in main_rows if ln.split(" | ")[4] not in ("pass", "held")]
    assert not bad, "\n".join(bad)
    assert r.returncode == 0, r.stderr[-3000:]
    # Nothing left behind: the bench's cgroups, users and mounts.
    assert not {c for c in cgfs.children("") if c.startswith("agentd-rel-")} - cg_before
    assert not {p for p in os.listdir("/tmp") if p.startswith("agentd-rel-")} - tmp_before
    with open("/etc/passwd") as f:
        assert "agrel" not in f.read()
    with open("/proc/self/mounts") as f:
        assert "agentd-rel-full" not in f.read()
