"""`agentd install`: put the fast `agentd` front, the unit, the policies and the state dir in place."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _repo_file(*parts):
    p = os.path.join(os.path.dirname(HERE), *parts)
    return p if os.path.exists(p) else None


def launcher_path():
    p = os.path.join(HERE, "_bin", "agentd")
    return p if os.path.exists(p) else None


def install(args):
    prefix = args.prefix
    bindir = os.path.join(prefix, "bin")
    os.makedirs(bindir, exist_ok=True)
    front = launcher_path()
    dest = os.path.join(bindir, "agentd")
    if front:
        tmp = dest + ".new"
        shutil.copy2(front, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
        print(f"installed {dest} (compiled front; `agentd tool` starts no interpreter)")
    else:
        with open(dest + ".new", "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} -m agentd \"$@\"\n")
        os.chmod(dest + ".new", 0o755)
        os.replace(dest + ".new", dest)
        print(f"installed {dest} (shell front: the compiled launcher was not built; `agentd tool` is slower)")
    os.makedirs("/etc/agentd/policies", exist_ok=True)
    pol_dir = _repo_file("policies")
    if pol_dir:
        for name in sorted(os.listdir(pol_dir)):
            if name.endswith(".yaml"):
                target = os.path.join("/etc/agentd/policies", name)
                if not os.path.exists(target):
                    shutil.copy2(os.path.join(pol_dir, name), target)
                    print(f"installed {target}")
    os.makedirs("/var/lib/agentd", mode=0o750, exist_ok=True)
    os.makedirs("/var/log/agentd", mode=0o750, exist_ok=True)
    unit = _repo_file("systemd", "agentd.service")
    if unit and not args.no_systemd:
        target = "/etc/systemd/system/agentd.service"
        with open(unit) as f:
            text = f.read().replace("@AGENTD@", dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
        print(f"installed {target}")
        if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
            print("run `systemctl enable --now agentd` to start the daemon")
    return 0
