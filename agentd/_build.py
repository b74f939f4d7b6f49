"""Build step for the compiled parts of agentd, run by setuptools (and by hand).

- The `agentd` launcher (agentd/launcher/*.c -> agentd/_bin/agentd): every tool call
  goes through it, so it is C, not Python (see agentd/launcher/agentd.c). Without it
  the package cannot place tool calls, so a failure here fails the build.
- The BPF objects (`make -C bpf` -> agentd/_bpf/): optional; without them agentd falls
  back to user-space monitoring, so a failure is one warning and the build goes on.

`python3 -m agentd._build` does the same in place, without pip.
Only the standard library and setuptools are imported: this runs inside pip's
isolated build environment, before any dependency is installed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools.command.build_py import build_py

PACKAGE_DIR = Path(__file__).resolve().parent
LAUNCHER_SOURCES = ("agentd.c", "tool.c", "proto.c", "conn.c", "json.c", "buf.c")
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE")


class BuildError(Exception):
    """The launcher could not be compiled; the message says what to install or fix."""


def c_string(text):
    """A C string literal for text (a path), safe for any byte in it."""
    out = ['"']
    for byte in os.fsencode(text):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F and ch != "?":   # "?" could start a trigraph
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


def find_compiler():
    """$CC if set, else gcc or cc from PATH; None if there is none."""
    cc = os.environ.get("CC")
    if cc:
        return cc.split()
    for name in ("gcc", "cc"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def build_launcher(package_dir=PACKAGE_DIR, python=None, extra_cflags=(), out=None):
    """Compile the launcher and return the path of the binary.

    python is the interpreter the launcher hands non-`tool` subcommands to; it
    defaults to the one running this build, which is the one the package is being
    installed for (pip builds with the target interpreter).
    """
    package_dir = Path(package_dir)
    src = package_dir / "launcher"
    out = Path(out) if out else package_dir / "_bin" / "agentd"
    cc = find_compiler()
    if cc is None:
        raise BuildError("agentd: no C compiler found (set CC, or install gcc: apt-get install gcc); "
                         "the agentd launcher cannot be built")
    missing = [name for name in LAUNCHER_SOURCES if not (src / name).is_file()]
    if missing:
        raise BuildError(f"agentd: launcher sources missing in {src}: {', '.join(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename: a running `agentd tool` keeps its old
    # binary, and an interrupted build never leaves a half-written one.
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = [*cc, *CFLAGS, *extra_cflags, f"-DAGENTD_PYTHON={c_string(python or sys.executable)}",
           "-o", str(tmp), *(str(src / name) for name in LAUNCHER_SOURCES)]
    # Static where libc.a is installed (libc6-dev): no dynamic loading on every tool
    # call (about 0.15 ms of CPU measured by bench/overhead.py) and nothing from the
    # agent's LD_PRELOAD in the placement path. Dynamic otherwise, e.g. sanitizer builds.
    for link in (["-static"], []):
        try:
            proc = subprocess.run(cmd + link, capture_output=True, text=True)
        except OSError as err:
            raise BuildError(f"agentd: cannot run the C compiler {cc[0]}: {err}") from err
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"agentd: compiling the launcher failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    if proc.stderr.strip():
        print(proc.stderr.strip(), file=sys.stderr)
    os.replace(tmp, out)
    return out


def build_bpf(root=PACKAGE_DIR.parent):
    """Run `make -C bpf` if the project has one; True if it built, False otherwise."""
    bpf = Path(root) / "bpf"
    if not (bpf / "Makefile").is_file():
        return False
    try:
        proc = subprocess.run(["make", "-C", str(bpf)], capture_output=True, text=True)
        ok, detail = proc.returncode == 0, (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    except OSError as err:
        ok, detail = False, [str(err)]
    if not ok:
        print("agentd: WARNING: building the BPF programs failed (make -C bpf); agentd will use "
              "user-space monitoring instead.\n  " + "\n  ".join(detail), file=sys.stderr)
    return ok


class BuildPy(build_py):
    """build_py that compiles the launcher (and BPF objects) before copying package files.

    The binary lands in the source tree (agentd/_bin/, git-ignored), where both a
    regular build (copied as package data) and an editable install (used in place)
    find it.
    """

    def run(self):
        try:
            build_launcher()
        except BuildError as err:
            # setuptools shows this message and stops the install.
            raise SystemExit(str(err)) from err
        build_bpf()
        super().run()


def main(argv=None):
    try:
        path = build_launcher()
    except BuildError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"built {path}")
    if build_bpf():
        print("built BPF objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
