"""Container sandboxes for real: rootful podman (Debian's package, cgroupfs manager, storage
on the guest's tmpfs, a local image imported from a root file system tarball) under
`agentd run`:

- the container started with `--cgroup-parent=$AGENTD_CONTAINER_PARENT` lives under the
  agent, its init in a leaf of its own;
- each `podman exec` is a tool call of its own (its own cgroup below the agent's tools/,
  the class and limits of its rule), its exit status reported;
- an exec past its memory.max is OOM-killed alone: the container, conmon and the agent
  go on (a later exec still runs);
- at the agent's end a running container is not killed: after `agentd run` returns the
  container still answers, `podman stop` / `rm` succeed, and then the agent's cgroup goes.

One daemon and one image for the module (start-up costs about a minute under emulation).
"""

import os
import shutil
import subprocess
import time

import pytest

from tests.helpers import DaemonProc

from .kernel_support import wait_for

pytestmark = pytest.mark.kernel

IMAGE = "localhost/agentd-test:1"

POLICY = """\
version: 1
tool_rules:
  - name: capped-dd
    match: {program: [dd]}
    class: normal
    memory: {max: 96Mi}
"""


def _rootfs_tar(tmp):
    """busybox and bash (with the libraries ldd names) in a tarball: `podman import` makes
    an image of it, no registry needed."""
    root = tmp / "rootfs"
    for d in ("bin", "tmp", "proc", "sys", "dev", "etc", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for name in ("sh", "sleep", "cat", "dd", "grep", "true", "echo", "ls"):
        os.symlink("busybox", root / "bin" / name)
    shutil.copy("/bin/bash", root / "bin" / "bash")
    libs = subprocess.run(["ldd", "/bin/bash"], capture_output=True, text=True, check=True).stdout
    for tok in libs.split():
        if tok.startswith("/"):
            dst = root / tok.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tok, dst)
    tar = tmp / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return tar


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """Environment for a rootful podman whose state lives on tmpfs (the guest sees the host's
    file system read-only): containers.conf and storage.conf of its own."""
    exe = shutil.which("podman")
    assert exe, "podman is not installed (.ci/setup.sh installs it)"
    tmp = tmp_path_factory.mktemp("podman")
    for d in ("graph", "run", "tmp"):
        (tmp / d).mkdir()
    (tmp / "containers.conf").write_text(
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{tmp}/events.log"\ntmp_dir = "{tmp}/tmp"\nimage_copy_tmp_dir = "{tmp}/tmp"\n'
        '[containers]\nnetns = "none"\n')
    (tmp / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp}/graph"\nrunroot = "{tmp}/run"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(tmp / "containers.conf"),
               CONTAINERS_STORAGE_CONF=str(tmp / "storage.conf"), TMPDIR=str(tmp / "tmp"))
    imp = subprocess.run([exe, "import", str(_rootfs_tar(tmp)), IMAGE], env=env, capture_output=True, text=True,
                         timeout=300)
    assert imp.returncode == 0, imp.stderr
    yield env
    subprocess.run([exe, "rm", "-a", "-f", "-t", "0"], env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, podman):
    from agentd.kernel.cgroupfs import CgroupFS
    from tests.helpers import cgroup2_mount, kill_tree
    tmp = tmp_path_factory.mktemp("containers-daemon")
    root = f"agentd-ctr-{os.getpid()}"
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    d = DaemonProc(str(tmp), root, policy=str(policy), extra_env={
        k: podman[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "TMPDIR")}).start()
    try:
        yield d
    finally:
        d.cleanup()
        fs = CgroupFS(cgroup2_mount())
        if fs.exists(root):
            kill_tree(fs, root)


def _tool_events(d, agent, kind):
    return [e for e in d.events() if e["event"] == kind and e.get("agent") == agent]


AGENT = """\
set -x
$P run -d --name "$NAME" --network none $RUN_OPTS --cgroup-parent="$AGENTD_CONTAINER_PARENT" {image} sleep 600 || exit 10
# The exec's cgroup as the container's own cgroup namespace shows it.
$P exec "$NAME" cat /proc/self/cgroup > "$OUT/exec1" || exit 11
$P exec "$NAME" dd if=/dev/zero of=/dev/null bs=32M count=2 2> "$OUT/small" || exit 12
$P exec "$NAME" dd if=/dev/zero of=/dev/null bs=160M count=1 2> "$OUT/big"
echo $? > "$OUT/big_status"
$P exec "$NAME" sh -c 'echo after' > "$OUT/after" || exit 13
exit 0
"""


def test_each_podman_exec_is_a_tool_call_and_the_runtime_survives(daemon, podman, tmp_path):
    d = daemon
    name = f"agentd-ctr-{os.getpid()}"
    out = tmp_path / "out"
    out.mkdir()
    agent = "ctr"
    r = d.run(AGENT.format(image=IMAGE), name=agent, timeout=900,
              env={"NAME": name, "OUT": str(out), "P": "podman", "RUN_OPTS": ""})
    try:
        tree = subprocess.run(["sh", "-c", f"cd /sys/fs/cgroup/{d.root} && for f in $(find . -name cgroup.procs); "
                                           "do echo \"$f: $(cat $f | tr '\\n' ' ')\"; done; ps -eo pid,ppid,args"],
                              capture_output=True, text=True).stdout
        print(tree)
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:], d.log()[-3000:], tree)
        base = f"{d.root}/agents/{agent}"
        # The exec ran in a tool call of the agent, outside the container's cgroup.
        exec1 = (out / "exec1").read_text().strip()
        assert exec1.startswith("0::/../../tools/"), exec1
        starts = _tool_events(d, agent, "tool_start")
        execs = [e for e in starts if e["argv"][:1] in (["cat"], ["dd"], ["sh"])]
        assert len(execs) == 4, [e["argv"] for e in starts]
        assert len({e["tool"] for e in execs}) == 4
        # The exec past its memory.max was OOM-killed (dd's 160 MiB buffer, 96 MiB allowed) ...
        assert int((out / "big_status").read_text()) == 137, (out / "big").read_text()
        ends = {e["tool"]: e for e in _tool_events(d, agent, "tool_end")}
        big = next(e for e in execs if "bs=160M" in e["argv"])
        small = next(e for e in execs if "bs=32M" in e["argv"])
        assert ends[big["tool"]]["outcome"] == "oom_killed", ends[big["tool"]]
        assert big["limits"].get("memory.max") == str(96 << 20), big["limits"]
        assert ends[small["tool"]]["outcome"] == "ok", ends[small["tool"]]
        assert ends[small["tool"]]["memory_peak_bytes"] >= 32 << 20
        # ... alone: a later exec ran, and the container still runs after the agent ended.
        assert (out / "after").read_text().strip() == "after"
        st = subprocess.run(["podman", "inspect", "-f", "{{.State.Status}} {{.State.Pid}}", name], env=podman,
                            capture_output=True, text=True, timeout=300)
        assert st.stdout.split()[0] == "running", (st.stdout, st.stderr)
        init = int(st.stdout.split()[1])
        with open(f"/proc/{init}/cgroup") as f:
            cg = f.read().strip()
        assert cg.startswith(f"0::/{base}/containers/"), cg
        # The runtime's own tools still work on it, and then the agent's cgroup goes.
        stop = subprocess.run(["podman", "rm", "-f", "-t", "0", name], env=podman, capture_output=True, text=True,
                              timeout=300)
        assert stop.returncode == 0, stop.stderr
        wait_for(lambda: not os.path.exists(f"/sys/fs/cgroup/{base}"), 60, "the agent's cgroup to go")
        assert any(e["event"] == "agent_end" and e.get("agent") == agent for e in d.events())
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], env=podman, capture_output=True, timeout=300)


MINI = os.path.join(os.path.dirname(__file__), "agents", "mini_podman.py")


def test_mini_swe_agent_in_podman_each_action_its_own_cgroup(daemon, podman, tmp_path):
    """The real harness: mini-swe-agent's docker environment with podman as its executable,
    its deterministic model, under `agentd run`. Each action (`podman exec ID bash -lc CMD`)
    runs in a tool call of its own, a child of the action with it; at the end the agent's
    own background `podman stop` runs to completion and the container goes (--rm)."""
    import minisweagent  # noqa: F401  (the test extra: .ci/setup.sh installs it)
    import sys
    from tests.helpers import REPO, agentd_cmd
    d = daemon
    out = tmp_path / "mini"
    out.mkdir()
    r = subprocess.run(agentd_cmd() + ["run", "--name", "mini", "--", sys.executable, MINI, IMAGE, str(out)],
                       capture_output=True, text=True, timeout=900, env=d.env, cwd=REPO)
    assert r.returncode == 0, (r.stderr[-3000:], d.log()[-2000:])
    assert "Submitted" in (out / "result").read_text()
    seen = []
    for n in range(3):
        lines = [ln for ln in (out / str(n)).read_text().splitlines() if ln.startswith("0::")]
        assert len(lines) == 2 and lines[0] == lines[1], lines          # the action's child with it
        assert lines[0].startswith("0::/../../tools/"), lines
        seen.append(lines[0])
    assert len(set(seen)) == 3, seen
    # mini-swe-agent stops its container in the background as it exits: agentd lets it.
    base = f"{d.root}/agents/mini"
    wait_for(lambda: not os.path.exists(f"/sys/fs/cgroup/{base}"), 300, "the agent's container to be stopped")
    ps = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=podman, capture_output=True,
                        text=True, timeout=300)
    assert "minisweagent-" not in ps.stdout, ps.stdout
    ends = [e for e in d.events() if e["event"] == "tool_end" and e.get("agent") == "mini"]
    stop = [e for e in ends if "stop" in " ".join(e["argv"])]
    assert stop and all(e["outcome"] == "ok" for e in stop), stop              # not killed by agentd


def test_exec_overhead_side_by_side(daemon, podman, figure):
    """What the container path costs per `podman exec`: the same `podman exec C true`, timed
    alternately into a container under an agent (each exec stopped at exec, placed in a tool
    call of its own, resumed) and into one podman placed itself (/libpod_parent), in one
    boot. bench/containers.py runs it with more rounds; the figures are the README's.
    Only behaviour is asserted: every exec into the agent's container became a tool call."""
    import statistics
    import sys
    from tests.helpers import REPO, agentd_cmd
    d = daemon
    rounds = int(os.environ.get("AGENTD_BENCH_CONTAINER_ROUNDS", "8"))
    managed, plain = f"agentd-bench-a-{os.getpid()}", f"agentd-bench-b-{os.getpid()}"
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "bench", "--", "sh", "-c",
                                             f'podman run -d --name {managed} --cgroup-parent='
                                             f'"$AGENTD_CONTAINER_PARENT" {IMAGE} sleep 3600 && exec sleep 3600'],
                             env=d.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["podman", "run", "-d", "--name", plain, IMAGE, "sleep", "3600"], env=podman, check=True,
                       capture_output=True, timeout=300)

        def running(name):
            st = subprocess.run(["podman", "inspect", "-f", "{{.State.Status}}", name], env=podman,
                                capture_output=True, text=True, timeout=300)
            return st.stdout.strip() == "running"
        wait_for(lambda: running(managed), 300, "the agent's container")
        before = len([e for e in d.events() if e["event"] == "tool_start" and e.get("agent") == "bench"])
        times = {managed: [], plain: []}
        for _ in range(rounds):
            for name in (managed, plain):
                t0 = time.monotonic()
                subprocess.run(["podman", "exec", name, "true"], env=podman, check=True, capture_output=True,
                               timeout=300)
                times[name].append(time.monotonic() - t0)
        placed = [e for e in d.events() if e["event"] == "tool_start" and e.get("agent") == "bench"][before:]
        assert len([e for e in placed if e["argv"] == ["true"]]) == rounds, placed
        med_a, med_b = statistics.median(times[managed]), statistics.median(times[plain])
        figure("podman exec median, agent's container (placed)", round(med_a * 1e3, 1), "ms")
        figure("podman exec median, plain container", round(med_b * 1e3, 1), "ms")
        figure("added per exec (median difference)", round((med_a - med_b) * 1e3, 1), "ms")
        held = d.request({"op": "status"})["mode_details"]["containers"]
        figure("exec held stopped until placed, median", held["hold_median_us"], "us")
        figure("exec held stopped until placed, max", held["hold_max_us"], "us")
        figure("rounds", rounds)
        print(sys.version)
    finally:
        agent.terminate()
        agent.wait(120)
        subprocess.run(["podman", "rm", "-f", "-t", "0", managed, plain], env=podman, capture_output=True,
                       timeout=300)


# --- docker (Debian's docker.io: dockerd, its own containerd, runc) ----------------------

DOCKER, DOCKERD = "/usr/bin/docker", "/usr/sbin/dockerd"


CONTAINERD, CTR = "/usr/bin/containerd", "/usr/bin/ctr"


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory, podman):
    """A dockerd of the test's own: state on tmpfs, no bridge or iptables, the cgroupfs
    driver (so that --cgroup-parent takes a path). Its containerd is started here, with
    the same kind of configuration dockerd writes for the one it starts itself, and waited
    for as long as the guest needs: dockerd gives its own containerd a fixed wait that an
    emulated guest beside another VM has run past ("timeout waiting for containerd to
    start"). Shims and runc are dockerd's usual ones either way."""
    assert os.access(DOCKERD, os.X_OK), "docker.io is not installed (.ci/setup.sh installs it)"
    assert os.access(CONTAINERD, os.X_OK), "containerd is not installed (docker.io depends on it)"
    tmp = tmp_path_factory.mktemp("docker")
    ctd = tmp / "containerd"
    ctd.mkdir()
    ctd_sock = ctd / "containerd.sock"
    (ctd / "config.toml").write_text(
        "version = 2\n"
        f'root = "{ctd / "root"}"\n'
        f'state = "{ctd / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{ctd_sock}"\n'
        f'[ttrpc]\n  address = "{ctd / "containerd.sock.ttrpc"}"\n'
        '[debug]\n  address = ""\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{ctd / "opt"}"\n')
    sock = tmp / "docker.sock"
    log = open(tmp / "dockerd.log", "w")
    ctd_log = open(ctd / "containerd.log", "w")
    containerd = subprocess.Popen([CONTAINERD, "--config", str(ctd / "config.toml")], stdout=ctd_log,
                                  stderr=ctd_log, start_new_session=True)
    proc = None
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    try:
        def containerd_up():
            assert containerd.poll() is None, open(ctd / "containerd.log").read()[-3000:]
            return subprocess.run([CTR, "--address", str(ctd_sock), "version"], capture_output=True,
                                  timeout=120).returncode == 0
        wait_for(containerd_up, 300, "containerd to answer", step=0.5)
        proc = subprocess.Popen([DOCKERD, "--data-root", str(tmp / "data"), "--exec-root", str(tmp / "exec"),
                                 "--pidfile", str(tmp / "dockerd.pid"), "-H", f"unix://{sock}",
                                 "--containerd", str(ctd_sock), "--iptables=false",
                                 "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                                 "--exec-opt", "native.cgroupdriver=cgroupfs"],
                                stdout=log, stderr=log, start_new_session=True)

        def up():
            assert proc.poll() is None, open(tmp / "dockerd.log").read()[-3000:]
            return subprocess.run([DOCKER, "version"], env=env, capture_output=True, timeout=120).returncode == 0
        wait_for(up, 300, "dockerd to answer", step=0.5)
        subprocess.run([DOCKER, "import", str(_rootfs_tar(tmp)), IMAGE], env=env, check=True, capture_output=True,
                       timeout=300)
        yield env
    finally:
        if proc is not None:
            subprocess.run(f"{DOCKER} rm -f $({DOCKER} ps -aq)", shell=True, env=env, capture_output=True,
                           timeout=300)
            _stop(proc)
        _stop(containerd)
        log.close()
        ctd_log.close()


def test_each_docker_exec_is_a_tool_call_and_the_runtime_survives(daemon, dockerd, tmp_path):
    """The same with docker: dockerd creates the container below the agent's container
    parent (--cgroup-parent, cgroupfs driver); each `docker exec` (containerd's shim runs
    `runc exec`) is a tool call; the one past its limit is OOM-killed alone; the container
    outlives the agent until `docker rm`."""
    d = daemon
    name = f"agentd-dck-{os.getpid()}"
    out = tmp_path / "out"
    out.mkdir()
    r = d.run(AGENT.format(image=IMAGE), name="dck", timeout=900,
              env={"NAME": name, "OUT": str(out), "P": DOCKER, "DOCKER_HOST": dockerd["DOCKER_HOST"],
                   # The guest's kernel has AppArmor on and no apparmor_parser to load docker's profile.
                   "RUN_OPTS": "--security-opt apparmor=unconfined"})
    try:
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:], d.log()[-3000:])
        base = f"{d.root}/agents/dck"
        assert (out / "exec1").read_text().strip().startswith("0::/../../tools/"), (out / "exec1").read_text()
        starts = [e for e in _tool_events(d, "dck", "tool_start") if e["argv"][:1] in (["cat"], ["dd"], ["sh"])]
        assert len({e["tool"] for e in starts}) == 4, [e["argv"] for e in starts]
        assert int((out / "big_status").read_text()) == 137, (out / "big").read_text()
        ends = {e["tool"]: e for e in _tool_events(d, "dck", "tool_end")}
        big = next(e for e in starts if "bs=160M" in e["argv"])
        assert ends[big["tool"]]["outcome"] == "oom_killed", ends[big["tool"]]
        assert (out / "after").read_text().strip() == "after"
        st = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Status}} {{.State.Pid}}", name], env=dockerd,
                            capture_output=True, text=True, timeout=300)
        assert st.stdout.split()[0] == "running", (st.stdout, st.stderr)
        with open(f"/proc/{st.stdout.split()[1]}/cgroup") as f:
            assert f.read().strip().startswith(f"0::/{base}/containers/")
        rm = subprocess.run([DOCKER, "rm", "-f", name], env=dockerd, capture_output=True, text=True, timeout=300)
        assert rm.returncode == 0, rm.stderr
        wait_for(lambda: not os.path.exists(f"/sys/fs/cgroup/{base}"), 60, "the agent's cgroup to go")
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], env=dockerd, capture_output=True, timeout=300)
