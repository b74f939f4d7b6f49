"""Build a Debian package of agentd from this tree: `agentd_<version>_<arch>.deb`.

    python3 -m agentd.deploy.deb [--out DIR] [--wheel WHEEL] [--wheelhouse DIR [--offline]]
                                 [--python /usr/bin/python3] [--systemd-version N]

agentd needs pydantic >= 2.5 and Debian 12 ships 1.x, so the package carries its Python
dependencies privately: a venv at /usr/lib/agentd/venv over the distribution's python3
(its `bin/python` is a link to it), filled on the build machine from the wheel of this
tree and PyPI's wheels (or a wheelhouse), so the target needs no network and no pip.
It depends only on Debian packages: python3 of the same minor version (the compiled
wheels are built for it), libbpf1 (loaded through ctypes) and libc6.

The staged tree is what `agentd install --root` lays out, run by the staged venv's own
interpreter (one description of the install for both paths), with the unit in
/lib/systemd/system and the front in /usr/bin. The launcher is compiled again to hand
its Python subcommands to the venv's interpreter. Policies are conffiles; the maintainer
scripts (agentd/deploy/debian/) enable and start the unit as debhelper would.
`dpkg-deb --build --root-owner-group` packs it: no debhelper, no debian/ folder.
"""

import argparse
import glob
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from ..errors import AgentdError

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(os.path.dirname(HERE))
SCRIPTS = os.path.join(HERE, "debian")

PACKAGE = "agentd"
PREFIX = "/usr"
LIBDIR = "/usr/lib/agentd"
VENV = f"{LIBDIR}/venv"
# Debian 12 still ships units below /lib (its /lib is /usr/lib's alias since usrmerge).
UNIT_DIR = "/lib/systemd/system"
UNIT = "agentd.service"
# The optional dependencies a host may need at run time (NVML for GPU placement); the test
# and plot extras are for checkouts.
EXTRAS = "gpu"
DOC_DIR = f"/usr/share/doc/{PACKAGE}"
# The package's folders that hold every agent's command lines: root's alone, as `agentd install` makes them.
PRIVATE_DIRS = ("/var/lib/agentd", "/var/log/agentd")
# Tree paths a wheel build must not see (caches, earlier builds, other machines' objects).
IGNORE = shutil.ignore_patterns(".git", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", "_bin", "_bpf")


class DebError(AgentdError):
    """The package could not be built; the message says what is missing."""


def _run(cmd, what, **kw):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except OSError as err:
        raise DebError(f"{what}: cannot run {cmd[0]}: {err}") from err
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DebError(f"{what} failed ({' '.join(map(str, cmd))}):\n{tail}")
    return proc.stdout


def project_version(tree=TREE):
    import tomllib
    with open(os.path.join(tree, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def build_wheel(tree, dest, log=print):
    """The wheel of `tree` (launcher and BPF objects compiled by its build hook), built
    from a copy so the checkout gains no build/, egg-info or objects for another python."""
    with tempfile.TemporaryDirectory(prefix="agentd-deb-src.") as src:
        copy = os.path.join(src, "agentd")
        shutil.copytree(tree, copy, ignore=IGNORE, symlinks=True)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dest, copy], "building agentd's wheel")
    wheels = glob.glob(os.path.join(dest, "agentd-*.whl"))
    if len(wheels) != 1:
        raise DebError(f"pip wheel left {wheels} in {dest}")
    log(f"built {os.path.basename(wheels[0])}")
    return wheels[0]


def check_wheel(wheel, tree=TREE):
    """A package without its launcher or any BPF object would install a degraded agentd
    silently: refuse it and say what to install."""
    names = set(zipfile.ZipFile(wheel).namelist())
    if "agentd/_bin/agentd" not in names:
        raise DebError(f"{wheel} has no agentd/_bin/agentd: the launcher was not compiled (apt-get install gcc libc6-dev)")
    want = {f"agentd/_bpf/{os.path.basename(p)[:-2]}.o" for p in glob.glob(os.path.join(tree, "bpf", "*.bpf.c"))}
    missing = sorted(want - names)
    if missing:
        raise DebError(f"{wheel} lacks the BPF objects {', '.join(missing)}: building them failed "
                       "(apt-get install clang-19 libbpf-dev bpftool, then rebuild)")


def python_minor(python):
    out = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], f"asking {python} its version")
    return out.strip()


def make_venv(stage, python, wheel, wheelhouse, offline, log=print):
    """The private venv, at its final path below `stage`, with agentd and its dependencies."""
    venv = os.path.join(stage, VENV.lstrip("/"))
    _run([python, "-m", "venv", "--without-pip", venv], f"creating a venv with {python}")
    vpy = os.path.join(venv, "bin", "python")
    pip = [sys.executable, "-m", "pip", "--python", vpy, "--disable-pip-version-check"]
    req = f"{wheel}[{EXTRAS}]"
    os.makedirs(wheelhouse, exist_ok=True)
    if not offline:
        # Binary wheels only: nothing is compiled here for the target, and the download
        # leaves in the wheelhouse all that a later --offline build needs.
        _run([*pip, "download", "-q", "--only-binary", ":all:", "--find-links", wheelhouse, "-d", wheelhouse, req],
             "downloading agentd's dependencies")
    _run([*pip, "install", "-q", "--no-compile", "--no-warn-script-location", "--only-binary", ":all:",
          "--no-index", "--find-links", wheelhouse, req],
         "installing agentd into the package's venv" + (" (offline: is the wheelhouse complete?)" if offline else ""))
    log(f"installed agentd and its dependencies into {VENV}")
    return venv


def site_packages(venv):
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    if len(found) != 1:
        raise DebError(f"expected one site-packages in {venv}, found {found}")
    return found[0]


def relocate(stage, venv):
    """The venv was made at stage + final path: every text naming the stage (script
    shebangs, activate scripts, pyvenv.cfg's creating command) names the final path."""
    old, new = (stage.rstrip("/") + VENV).encode(), VENV.encode()
    for path in [*glob.glob(os.path.join(venv, "bin", "*")), os.path.join(venv, "pyvenv.cfg")]:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if old in data:
            with open(path, "wb") as f:
                f.write(data.replace(old, new))
    # Nobody activates a system package's venv: its scripts only name the venv.
    for p in glob.glob(os.path.join(venv, "bin", "[Aa]ctivate*")):
        os.unlink(p)
    # pip's record of where the agentd wheel came from (a temporary path on this machine).
    for p in glob.glob(os.path.join(site_packages(venv), "agentd-*.dist-info", "direct_url.json")):
        os.unlink(p)


def rebuild_launcher(venv):
    """The launcher in the wheel hands subcommands to the build machine's python: build it
    again for the venv's, from the sources the package carries."""
    from .. import _build
    pkg = os.path.join(site_packages(venv), "agentd")
    try:
        return _build.build_launcher(package_dir=pkg, python=f"{VENV}/bin/python",
                                     out=os.path.join(pkg, "_bin", "agentd"))
    except _build.BuildError as err:
        raise DebError(str(err)) from err


def agentd_install(stage, venv, systemd_version, log=print):
    """`agentd install --root STAGE` by the staged package itself (from /, so it is the
    venv's agentd that installs, with its launcher, policies and unit template)."""
    cmd = [os.path.join(venv, "bin", "python"), "-m", "agentd", "install", "--root", stage, "--prefix", PREFIX,
           "--unit-dir", UNIT_DIR]
    if systemd_version is not None:
        cmd += ["--systemd-version", str(systemd_version)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AGENTD_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = _run(cmd, "agentd install --root", cwd="/", env=env)
    for line in out.splitlines():
        log(f"  {line}")
    os.symlink(os.path.relpath(f"{VENV}/bin/agentd-py", f"{PREFIX}/bin"),
               os.path.join(stage, PREFIX.lstrip("/"), "bin", "agentd-py"))


def add_docs(stage, tree, version, maintainer):
    doc = os.path.join(stage, DOC_DIR.lstrip("/"))
    os.makedirs(doc, exist_ok=True)
    shutil.copy2(os.path.join(tree, "README.md"), os.path.join(doc, "README.md"))   # the unit's Documentation=
    with open(os.path.join(doc, "copyright"), "w") as f:
        f.write("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
                f"Upstream-Name: {PACKAGE}\n\nFiles: *\nLicense: Apache-2.0\n"
                " On Debian systems the full text of the Apache License 2.0 is in\n"
                " /usr/share/common-licenses/Apache-2.0.\n\n"
                f"Files: {VENV}/lib/*\nComment: agentd's Python dependencies, from their PyPI wheels; each\n"
                " one's licence is in its .dist-info folder.\n")
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    text = (f"{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built from the agentd source tree.\n\n"
            f" -- {maintainer}  {date}\n")
    with open(os.path.join(doc, "changelog.Debian.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(text.encode())


def normalize_modes(stage):
    """Files 0644 (0755 if executable), folders 0755, the private ones 0700: nothing
    depends on the build machine's umask."""
    for dirpath, dirs, files in os.walk(stage):
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o111 else 0o644)
    for d in PRIVATE_DIRS:
        os.chmod(os.path.join(stage, d.lstrip("/")), 0o700)


def check_stage(stage):
    """No file may name the build's staging folder, and no bytecode ships (postinst compiles)."""
    needle = stage.rstrip("/").encode()
    for dirpath, dirs, files in os.walk(stage):
        if "__pycache__" in dirs:
            raise DebError(f"bytecode in {dirpath}/__pycache__ would ship")
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                if needle in f.read():
                    raise DebError(f"{p} names the staging folder {stage}: it would be wrong on the target")


def installed_size_kib(stage):
    total = 0
    for dirpath, dirs, files in os.walk(stage):
        total += len(dirs) + sum(os.lstat(os.path.join(dirpath, n)).st_size for n in files)
    return (total + 1023) // 1024


def write_control(stage, version, arch, pyminor, maintainer):
    deb = os.path.join(stage, "DEBIAN")
    os.makedirs(deb)
    major, minor = map(int, pyminor.split("."))
    depends = [f"python3 (>= {major}.{minor})", f"python3 (<< {major}.{minor + 1})", "libbpf1 (>= 1:1.0)", "libc6"]
    with open(os.path.join(deb, "control"), "w") as f:
        f.write(f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {maintainer}\n"
                f"Installed-Size: {installed_size_kib(stage)}\nDepends: {', '.join(depends)}\n"
                "Suggests: prometheus\nSection: admin\nPriority: optional\n"
                "Description: cgroup v2 + eBPF resource controller for AI coding agents\n"
                " agentd runs each AI coding agent and each of its tool calls in a cgroup of its own,\n"
                " forecasts their memory, applies per-class limits, throttles, freezes or kills in a\n"
                " ladder under pressure, and exports metrics for Prometheus.\n"
                " .\n"
                f" This package carries its Python dependencies in a private venv ({VENV}).\n")
    conffiles = sorted("/" + os.path.relpath(p, stage) for p in glob.glob(os.path.join(stage, "etc", "**", "*"),
                                                                          recursive=True) if os.path.isfile(p))
    with open(os.path.join(deb, "conffiles"), "w") as f:
        f.write("".join(c + "\n" for c in conffiles))
    for name in ("postinst", "prerm", "postrm"):
        with open(os.path.join(SCRIPTS, name)) as src:
            text = src.read().replace("@LIBDIR@", LIBDIR).replace("@UNIT@", UNIT)
        with open(os.path.join(deb, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(deb, name), 0o755)
    # md5sums last: of every shipped file (not DEBIAN/ itself, not links).
    lines = []
    for dirpath, dirs, files in os.walk(stage):
        dirs[:] = sorted(d for d in dirs if not (dirpath == stage and d == "DEBIAN"))
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                lines.append(f"{hashlib.md5(f.read()).hexdigest()}  {os.path.relpath(p, stage)}\n")
    with open(os.path.join(deb, "md5sums"), "w") as f:
        f.writelines(lines)
    os.chmod(os.path.join(deb, "md5sums"), 0o644)
    return conffiles


def default_maintainer():
    name, mail = os.environ.get("DEBFULLNAME"), os.environ.get("DEBEMAIL")
    if name and mail:
        return f"{name} <{mail}>"
    return "agentd maintainers <root@localhost>"


def build(out_dir, tree=TREE, wheel=None, wheelhouse=None, offline=False, python="/usr/bin/python3",
          systemd_version=None, maintainer=None, log=print):
    """Build the package into `out_dir`; returns its path."""
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            raise DebError(f"{tool} not found: apt-get install dpkg-dev")
    if not os.path.isfile(python):
        raise DebError(f"{python} does not exist: the package's venv runs on the distribution's python3 "
                       "(apt-get install python3), name another with --python")
    if offline and not wheelhouse:
        raise DebError("--offline needs --wheelhouse DIR holding the wheels of every dependency")
    version = project_version(tree)
    arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()
    maintainer = maintainer or default_maintainer()
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentd-deb.") as tmp:
        if wheel is None:
            wheel = build_wheel(tree, os.path.join(tmp, "wheel"), log)
        check_wheel(wheel, tree)
        stage = os.path.join(tmp, "root")
        venv = make_venv(stage, python, os.path.abspath(wheel), wheelhouse or os.path.join(tmp, "wheelhouse"),
                         offline, log)
        relocate(stage, venv)
        rebuild_launcher(venv)
        agentd_install(stage, venv, systemd_version, log)
        add_docs(stage, tree, version, maintainer)
        normalize_modes(stage)
        check_stage(stage)
        write_control(stage, version, arch, python_minor(python), maintainer)
        deb = os.path.join(out_dir, f"{PACKAGE}_{version}_{arch}.deb")
        _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, deb], "dpkg-deb --build")
    log(f"built {deb}")
    return deb


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m agentd.deploy.deb", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="dist", help="where the .deb goes (default: dist)")
    ap.add_argument("--wheel", help="agentd's wheel, already built from this tree (default: build it)")
    ap.add_argument("--wheelhouse", help="wheels of the dependencies: used first, and downloads are kept there")
    ap.add_argument("--offline", action="store_true", help="use only --wheelhouse; no index is asked")
    ap.add_argument("--python", default="/usr/bin/python3", help="the target's interpreter (default /usr/bin/python3)")
    ap.add_argument("--systemd-version", type=int,
                    help="render the unit for this systemd version (default: this machine's, as `agentd install`)")
    ap.add_argument("--maintainer", help="the Maintainer field (default: $DEBFULLNAME <$DEBEMAIL>)")
    args = ap.parse_args(argv)
    try:
        build(args.out, wheel=args.wheel, wheelhouse=args.wheelhouse, offline=args.offline, python=args.python,
              systemd_version=args.systemd_version, maintainer=args.maintainer)
    except DebError as err:
        print(f"agentd: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
