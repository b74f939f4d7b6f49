"""The launcher's front (exec of the Python CLI), its usage errors, and the build hook."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agentd._build import BuildError, build_launcher, c_string

REPO = Path(__file__).resolve().parents[2]
# connect() fails at once with ENOTDIR (not retried): the no-daemon path without the 1 s wait.
NO_DAEMON = "/dev/null/agentd.sock"


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    return str(build_launcher(out=tmp_path_factory.mktemp("launcher") / "agentd", extra_cflags=("-Werror",)))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    env.update(extra)
    return env


@pytest.fixture
def recorder(tmp_path):
    """A stand-in interpreter that records the arguments it was started with."""
    out = tmp_path / "argv"
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{out}'\nexit 3\n")
    script.chmod(0o755)
    return script, out


@pytest.mark.parametrize("args", [["daemon", "--root", "x y", "--metrics-listen", "none"], [], ["tool-not"]])
def test_front_execs_python_module_with_same_args(launcher, recorder, args):
    script, out = recorder
    p = subprocess.run([launcher, *args], env=clean_env(AGENTD_PYTHON=str(script)), capture_output=True)
    assert p.returncode == 3, p.stderr
    assert out.read_text().splitlines() == ["-m", "agentd", *args]


def test_front_default_interpreter_is_the_build_one(tmp_path, recorder):
    script, out = recorder
    exe = build_launcher(out=tmp_path / "agentd", python=str(script))
    p = subprocess.run([str(exe), "status"], env=clean_env(), capture_output=True)
    assert p.returncode == 3 and out.read_text().splitlines() == ["-m", "agentd", "status"]


def test_front_missing_interpreter_says_what_to_do(launcher):
    p = subprocess.run([launcher, "status"], env=clean_env(AGENTD_PYTHON="/nonexistent/python3"),
                       capture_output=True, text=True)
    assert p.returncode == 127
    assert "AGENTD_PYTHON" in p.stderr and "/nonexistent/python3" in p.stderr


@pytest.mark.parametrize("args,msg", [
    ([], "missing command"),
    (["--"], "missing command"),
    (["--class"], "option --class needs a value"),
    (["--mem=", "--", "true"], "option --mem needs a non-empty value"),
    (["--bogus", "--", "true"], "unknown option '--bogus'"),
    (["--classy=x", "true"], "unknown option '--classy=x'"),
])
def test_usage_errors_exit_2(launcher, args, msg):
    p = subprocess.run([launcher, "tool", *args], env=clean_env(AGENTD_SOCKET=NO_DAEMON),
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert msg in p.stderr and "usage: agentd tool" in p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(launcher, flag):
    p = subprocess.run([launcher, "tool", flag], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("usage: agentd tool") and p.stderr == ""


def test_cmd_options_are_not_taken_for_ours(launcher):
    # The first non-option starts CMD, so CMD's own --class/-h reach CMD.
    p = subprocess.run([launcher, "tool", "--class", "x", "echo", "--class", "-h"],
                       env=clean_env(AGENTD_SOCKET=NO_DAEMON), capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "--class -h\n"
    assert p.stderr.startswith(f"agentd: no daemon at {NO_DAEMON} (Not a directory)")


@pytest.mark.parametrize("name,code", [("absent", 127), ("not-executable", 126)])
def test_fallback_exec_failures(launcher, tmp_path, name, code):
    (tmp_path / "not-executable").write_text("echo no\n")
    cmd = [str(tmp_path / name)]
    p = subprocess.run([launcher, "tool", "--", *cmd], env=clean_env(AGENTD_SOCKET=NO_DAEMON),
                       capture_output=True, text=True)
    assert p.returncode == code
    assert p.stderr.splitlines()[-1].startswith(f"agentd: {cmd[0]}: ")


def test_c_string_escapes_any_path():
    assert c_string('/a b/"q"\\/é??=') == '"/a b/\\"q\\"\\\\/\\303\\251\\077\\077="'


def test_compiler_failure_is_a_clear_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(BuildError, match="cannot run the C compiler"):
        build_launcher(out=tmp_path / "agentd")
    assert not (tmp_path / "agentd").exists()


def _copy_project(dst, bpf_makefile=None):
    """The project as pip sees it, minus build outputs (the hook must make them) and
    with bpf/ replaced by bpf_makefile if given (the real BPF build is tested elsewhere)."""
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "_bin", "_bpf", "*.egg-info", "build", "dist", ".cache", "tests", "bench", "bpf"))
    if bpf_makefile is not None:
        (dst / "bpf").mkdir()
        (dst / "bpf" / "Makefile").write_text(bpf_makefile)
    return dst


def _pip(python, *args, cwd):
    # With pip's build isolation, as users install: pip fetches setuptools and wheel
    # into a private build environment (from its cache or the index).
    return subprocess.run([str(python), "-m", "pip", *args, "--no-deps", "-v"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wheel_contains_launcher_and_bpf_failure_only_warns(tmp_path):
    src = _copy_project(tmp_path / "src", bpf_makefile="all:\n\t@echo agentd-test bpf failure >&2; false\n")
    (src.parent / "dist").mkdir()
    p = _pip(sys.executable, "wheel", "-w", str(src.parent / "dist"), str(src), cwd=src)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "WARNING: building the BPF programs failed" in p.stdout + p.stderr
    (whl,) = (src.parent / "dist").glob("agentd-*.whl")
    with zipfile.ZipFile(whl) as z:
        info = z.getinfo("agentd/_bin/agentd")
        assert (info.external_attr >> 16) & 0o111, "launcher must be executable in the wheel"
        assert any(n.startswith("agentd/launcher/") and n.endswith(".c") for n in z.namelist())


@pytest.mark.slow
def test_editable_install_builds_launcher_for_its_interpreter(tmp_path):
    src = _copy_project(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    p = _pip(venv / "bin" / "python", "install", "-e", str(src), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    exe = src / "agentd" / "_bin" / "agentd"
    assert os.access(exe, os.X_OK)
    # No AGENTD_PYTHON: the front must start the venv's interpreter, which finds the
    # editable package (the source copy) and prints the CLI's own help.
    r = subprocess.run([str(exe), "--help"], env=clean_env(), capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: agentd")
    # The venv's own record of agentd is the editable one, at the source copy. (Importing
    # it from the venv would find a regular install in the system's site-packages first,
    # as .ci/setup.sh makes one: setuptools' editable finder runs after the path search.)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "show", "agentd"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert f"Editable project location: {src}" in r.stdout, r.stdout + r.stderr
