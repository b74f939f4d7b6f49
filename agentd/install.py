"""`agentd install`: put the fast `agentd` front, the unit, the policies and the state dir in place.

`--root DIR` stages everything below DIR (like DESTDIR for packagers and tests): paths
written *into* files (the unit's ExecStart) stay the final ones. Existing policies under
/etc/agentd are never overwritten: they are the administrator's. The Debian package
(agentd/deploy/deb.py) stages itself with this too, with the unit in the distribution's
unit directory and rendered for the target's systemd.
"""

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT_NAME = "agentd.service"
# An administrator's install; a distribution package puts its unit in /lib/systemd/system.
UNIT_DIR = "/etc/systemd/system"
PLACEHOLDER = "@AGENTD@"


def _find(*parts):
    """A shipped file: in the checkout (editable installs), else under <sys.prefix>/share/agentd."""
    for base in (os.path.dirname(HERE), os.path.join(sys.prefix, "share", "agentd")):
        p = os.path.join(base, *parts)
        if os.path.exists(p):
            return p
    return None


def launcher_path():
    p = os.path.join(HERE, "_bin", "agentd")
    return p if os.path.exists(p) else None


def unit_template():
    return _find("systemd", UNIT_NAME)


# systemd learnt DelegateSubgroup= in version 254; older ones warn about the unknown key on
# every daemon-reload and start the daemon in the unit's cgroup (agentd/placement.py).
DELEGATE_SUBGROUP_SINCE = 254


def systemd_version():
    """The major version of the systemd on this host (`systemctl --version`), or None."""
    exe = shutil.which("systemctl")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"systemd (\d+)", out)
    if m:
        return int(m.group(1))
    return None


def render_unit(agentd_path, template=None, systemd=None):
    """The unit text with ExecStart pointing at `agentd_path`, for systemd version `systemd`
    (None: this host's; where unknown, the unit keeps every line)."""
    template = template or unit_template()
    if template is None:
        from .errors import AgentdError
        raise AgentdError("the systemd unit template systemd/agentd.service was not found (checkout or "
                          f"{sys.prefix}/share/agentd/systemd); reinstall agentd")
    with open(template) as f:
        text = f.read().replace(PLACEHOLDER, agentd_path)
    version = systemd if systemd is not None else systemd_version()
    if version is not None and version < DELEGATE_SUBGROUP_SINCE:
        text = "".join(line for line in text.splitlines(keepends=True)
                       if not line.startswith("DelegateSubgroup="))
    return text


def _staged(root, path):
    return os.path.join(root, path.lstrip("/")) if root and root != "/" else path


def _write(path, text, mode):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(args, out=print):
    root = getattr(args, "root", None) or "/"
    prefix = args.prefix
    dest = os.path.join(prefix, "bin", "agentd")            # the final path (goes into the unit)
    bindir = _staged(root, os.path.join(prefix, "bin"))
    os.makedirs(bindir, exist_ok=True)
    staged_dest = os.path.join(bindir, "agentd")
    front = launcher_path()
    if front:
        tmp = staged_dest + ".new"
        shutil.copy2(front, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, staged_dest)
        out(f"installed {staged_dest} (compiled front; `agentd tool` starts no interpreter)")
    else:
        _write(staged_dest, f"#!/bin/sh\nexec {sys.executable} -m agentd \"$@\"\n", 0o755)
        out(f"installed {staged_dest} (shell front: the compiled launcher was not built; `agentd tool` is slower)")
    pol_target = _staged(root, "/etc/agentd/policies")
    os.makedirs(pol_target, exist_ok=True)
    pol_dir = _find("policies")
    for name in sorted(os.listdir(pol_dir)) if pol_dir else []:
        if name.endswith(".yaml"):
            target = os.path.join(pol_target, name)
            if not os.path.exists(target):
                shutil.copy2(os.path.join(pol_dir, name), target)
                out(f"installed {target}")
    for d in ("/var/lib/agentd", "/var/log/agentd"):
        os.makedirs(_staged(root, d), mode=0o700, exist_ok=True)     # every agent's argv: root's alone
    if not args.no_systemd:
        target = _staged(root, os.path.join(getattr(args, "unit_dir", None) or UNIT_DIR, UNIT_NAME))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _write(target, render_unit(dest, systemd=getattr(args, "systemd_version", None)), 0o644)
        out(f"installed {target}")
        if root == "/" and shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
            out("run `systemctl enable --now agentd` to start the daemon")
    return 0
