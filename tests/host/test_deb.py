"""The Debian package (`python3 -m agentd.deploy.deb`): built from this tree, its control
data and contents checked, then installed, upgraded, removed and purged with the real
dpkg into a throwaway root (`dpkg --root`, maintainer scripts run chrootless with
$DPKG_ROOT, so no service manager is touched), and agentd run from that root's private
venv. Downloads the dependencies' wheels from the package index once (pip's cache)."""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from agentd.deploy import deb as debbuild
from agentd.install import render_unit

pytestmark = [pytest.mark.host, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = debbuild.VENV
SYSTEMD = 252          # the unit is rendered for a given systemd, whatever this host has


def sh(*cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    said = []
    path = debbuild.build(str(out / "dist"), systemd_version=SYSTEMD, wheelhouse=str(out / "wheelhouse"),
                          log=said.append)
    yield path, str(out)
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def extracted(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("x")
    sh("dpkg-deb", "-x", built[0], str(root))
    ctl = root / "DEBIAN"
    sh("dpkg-deb", "-e", built[0], str(ctl))
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


def field(deb, name):
    return sh("dpkg-deb", "-f", deb, name).strip()


def test_name_and_control_fields(built):
    deb = built[0]
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    arch = sh("dpkg", "--print-architecture").strip()
    assert os.path.basename(deb) == f"agentd_{version}_{arch}.deb"
    assert field(deb, "Package") == "agentd"
    assert field(deb, "Version") == version
    assert field(deb, "Architecture") == arch
    assert re.fullmatch(r".+ <[^ ]+@[^ ]+>", field(deb, "Maintainer"))
    assert field(deb, "Description").startswith("cgroup v2 + eBPF resource controller")
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    minor = sh("/usr/bin/python3", "-c", "import sys; print(sys.version_info[1])").strip()
    # The private venv's compiled wheels (pydantic-core, PyYAML, psutil) are for this python only.
    assert f"python3 (>= 3.{minor})" in depends and f"python3 (<< 3.{int(minor) + 1})" in depends
    assert any(d.startswith("libbpf1") for d in depends)
    # Only Debian packages: none of the Python dependencies Debian ships too old (pydantic 1.x).
    assert not any("pydantic" in d or d.startswith("python3-") for d in depends)
    assert int(field(deb, "Installed-Size")) > 1000


def test_contents_are_what_agentd_install_lays_out(extracted):
    x = extracted
    assert os.access(f"{x}/usr/bin/agentd", os.X_OK)
    assert os.readlink(f"{x}/usr/bin/agentd-py") == "../lib/agentd/venv/bin/agentd-py"
    with open(f"{x}{VENV}/bin/agentd-py") as f:
        assert f.readline() == f"#!{VENV}/bin/python\n"
    # The venv runs on the distribution's interpreter, whatever ran the build.
    assert os.readlink(f"{x}{VENV}/bin/python3") == "/usr/bin/python3"
    # The front hands its Python subcommands to the venv's interpreter.
    with open(f"{x}/usr/bin/agentd", "rb") as f:
        assert f"{VENV}/bin/python\0".encode() in f.read()
    # The unit `agentd install` writes, from the same template, in the distribution's unit folder.
    with open(f"{x}/lib/systemd/system/agentd.service") as f:
        assert f.read() == render_unit("/usr/bin/agentd", template=os.path.join(REPO, "systemd", "agentd.service"),
                                       systemd=SYSTEMD)
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "policies", "*.yaml")))
    assert sorted(os.listdir(f"{x}/etc/agentd/policies")) == shipped
    for d in ("var/lib/agentd", "var/log/agentd"):
        assert os.stat(f"{x}/{d}").st_mode & 0o777 == 0o700
    site = glob.glob(f"{x}{VENV}/lib/python3.*/site-packages")[0]
    objs = sorted(os.path.basename(p)[:-2] + ".o" for p in glob.glob(os.path.join(REPO, "bpf", "*.bpf.c")))
    assert objs and sorted(os.listdir(f"{site}/agentd/_bpf")) == objs
    pyd = [m for p in glob.glob(f"{site}/pydantic-*.dist-info")
           if (m := re.search(r"pydantic-(\d+)\.(\d+)", p))]
    assert pyd and (int(pyd[0][1]), int(pyd[0][2])) >= (2, 5)
    assert os.path.isfile(f"{x}/usr/share/doc/agentd/copyright")
    assert not glob.glob(f"{x}/**/__pycache__", recursive=True)


def test_conffiles_and_md5sums(extracted):
    x = extracted
    with open(f"{x}/DEBIAN/conffiles") as f:
        conffiles = f.read().split()
    assert conffiles == sorted(f"/etc/agentd/policies/{n}" for n in os.listdir(f"{x}/etc/agentd/policies"))
    with open(f"{x}/DEBIAN/md5sums") as f:
        sums = dict(reversed(line.rstrip("\n").split("  ", 1)) for line in f)
    files = [os.path.relpath(os.path.join(d, n), x) for d, _, ns in os.walk(x) for n in ns
             if not os.path.relpath(d, x).startswith("DEBIAN") and not os.path.islink(os.path.join(d, n))]
    assert sorted(sums) == sorted(files)
    for rel in ("usr/bin/agentd", "lib/systemd/system/agentd.service"):
        with open(os.path.join(x, rel), "rb") as f:
            assert sums[rel] == hashlib.md5(f.read()).hexdigest()
    for name in ("postinst", "prerm", "postrm"):
        sh("sh", "-n", f"{x}/DEBIAN/{name}")


class Root:
    """A throwaway dpkg root: its own database, scripts run chrootless with $DPKG_ROOT."""

    def __init__(self, path):
        self.path = path
        for d in ("info", "updates", "triggers"):
            os.makedirs(f"{path}/var/lib/dpkg/{d}")
        open(f"{path}/var/lib/dpkg/status", "w").close()

    def dpkg(self, *args):
        # --force-depends: this root has no python3 or libbpf1 of its own (the host's serve).
        return sh("dpkg", f"--root={self.path}", "--force-script-chrootless", "--force-depends",
                  "--log=/dev/null", *args)

    def files(self):
        return sorted(os.path.relpath(os.path.join(d, n), self.path) for d, ds, ns in os.walk(self.path)
                      for n in ns + ds if not os.path.relpath(d, self.path).startswith("var/lib/dpkg"))


def test_install_upgrade_remove_purge_in_a_throwaway_root(built, tmp_path):
    root = Root(str(tmp_path / "root"))
    r = root.path
    root.dpkg("-i", built[0])
    assert "install ok installed" in root.dpkg("-s", "agentd")
    site = glob.glob(f"{r}{VENV}/lib/python3.*/site-packages")[0]
    # The postinst compiled the sources, with the final paths in the bytecode.
    assert glob.glob(f"{site}/agentd/cli/__pycache__/__init__.*.pyc")

    # agentd runs from the root's private venv: its own agentd and pydantic 2, not the host's.
    py = f"{r}{VENV}/bin/python"
    probe = sh(py, "-c", "import agentd, pydantic; print(agentd.__file__); print(pydantic.VERSION)",
               cwd=str(tmp_path), env={"PATH": os.environ["PATH"]})
    mod, version = probe.split()
    assert mod.startswith(f"{r}{VENV}/") and int(version.split(".")[0]) >= 2
    doc = json.loads(sh(py, "-m", "agentd", "doctor", "--json", cwd=str(tmp_path),
                        env={"PATH": os.environ["PATH"], "AGENTD_SOCKET": str(tmp_path / "none.sock")}))
    assert doc["policy"]["ok"] is True
    # The package's BPF objects load on this kernel (it has BTF and libbpf1).
    assert doc["modes"]["monitoring"]["mode"] == "bpf", doc["modes"]["monitoring"]
    # The front runs and hands `doctor` to the interpreter it is told (its own is only there once installed).
    front = subprocess.run([f"{r}/usr/bin/agentd", "doctor", "--json"], capture_output=True, text=True,
                           cwd=str(tmp_path), env={"PATH": os.environ["PATH"], "AGENTD_PYTHON": py,
                                                  "AGENTD_SOCKET": str(tmp_path / "none.sock")})
    assert front.returncode == 0, front.stderr
    assert json.loads(front.stdout)["modes"]["monitoring"]["mode"] == "bpf"

    # An administrator's policy edit survives a reinstall: policies are conffiles.
    edited = f"{r}/etc/agentd/policies/laptop.yaml"
    with open(edited, "a") as f:
        f.write("# tuned here\n")
    root.dpkg("-i", built[0])
    with open(edited) as f:
        assert f.read().endswith("# tuned here\n")

    # remove: the program goes (bytecode included), the policies and state stay.
    os.makedirs(f"{r}/var/lib/agentd/history")
    root.dpkg("-r", "agentd")
    left = root.files()
    assert not any(p.startswith(("usr/", "lib/")) for p in left), left
    assert "etc/agentd/policies/laptop.yaml" in left and "var/lib/agentd/history" in left
    # purge: policies, state and logs go too; nothing of agentd is left.
    root.dpkg("-P", "agentd")
    assert [p for p in root.files() if p not in ("var", "var/lib", "var/lib/dpkg")] == []
