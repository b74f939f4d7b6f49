"""The launcher's JSON reader/writer fuzz harness (agentd/launcher/fuzz/) stays alive.

Builds the libFuzzer harness with ASan and UBSan and runs a short session over the
seed corpus (which holds every input that once found a bug) plus a few thousand
mutations. The long campaign (1 M inputs) is run by hand; see agentd/launcher/fuzz/.
"""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(REPO, "agentd", "launcher")
FUZZ = os.path.join(SRC, "fuzz")
# Small limits in proto.c so that short inputs reach the paths that cut a long argv.
LIMITS = ("-DARGV_MAX_ITEMS=16", "-DARG_MAX_BYTES=256", "-DARGV_BUDGET=1024")


def _clang():
    for name in ("clang-19", "clang"):
        if shutil.which(name):
            return name
    pytest.fail("no clang: the fuzz harness needs clang with libFuzzer (apt-get install clang-19 libclang-rt-19-dev; "
                ".ci/setup.sh installs both)")


def build(out):
    cmd = [_clang(), "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
           "-D_GNU_SOURCE", *LIMITS, "-I", SRC, os.path.join(FUZZ, "fuzz_json.c"),
           *(os.path.join(SRC, f) for f in ("buf.c", "json.c", "proto.c", "conn.c")), "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "fuzzer" in r.stderr and ("cannot find" in r.stderr or "not found" in r.stderr):
        pytest.fail("clang's libFuzzer runtime is missing: apt-get install libclang-rt-19-dev (.ci/setup.sh does)\n"
                    + r.stderr[-500:])
    assert r.returncode == 0, r.stderr


def test_fuzz_harness_runs_clean(tmp_path):
    exe = str(tmp_path / "fuzz_json")
    build(exe)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([exe, "-runs=4000", "-seed=1", "-max_total_time=25", "-print_final_stats=1",
                        str(corpus), os.path.join(FUZZ, "corpus")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERROR" not in r.stderr and "check failed" not in r.stderr
    runs = [ln for ln in r.stderr.splitlines() if ln.startswith("stat::number_of_executed_units:")]
    assert runs and int(runs[0].split()[-1]) > 0, r.stderr[-1000:]


def test_fuzz_harness_finds_a_planted_bug(tmp_path):
    """The checks can fail: a writer that leaves a raw control byte in a JSON string is
    caught on the first input that has one."""
    bad = tmp_path / "buf.c"
    text = open(os.path.join(SRC, "buf.c")).read()
    planted = text.replace('buf_adds(b, "\\\\n");', 'buf_addc(b, (char)c);', 1)
    assert planted != text
    bad.write_text(planted)
    for f in ("json.h", "json.c", "proto.c", "proto.h", "conn.c", "conn.h", "launcher.h"):
        shutil.copy(os.path.join(SRC, f), tmp_path / f)
    exe = str(tmp_path / "fuzz_bad")
    cmd = [_clang(), "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-D_GNU_SOURCE", *LIMITS,
           "-I", str(tmp_path), os.path.join(FUZZ, "fuzz_json.c"),
           *(str(tmp_path / f) for f in ("buf.c", "json.c", "proto.c", "conn.c")), "-o", exe]
    subprocess.run(cmd, check=True, capture_output=True)
    crash = tmp_path / "newline"
    crash.write_bytes(b"\x01\xffa\nb")     # the writer (mode 1) on "a\nb", uncut
    r = subprocess.run([exe, str(crash)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode != 0 and "check failed" in r.stderr, r.stderr[-1000:]
