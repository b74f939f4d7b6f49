"""Disk I/O: the policy's io keys, the resolver of the disks it names (over a fake
/sys/dev/block), the planning of io.weight / io.max contents, and the stage that writes
them for agents and tool calls (over the fake cgroup tree)."""

import os
import types

import pytest

from agentd.disk import build
from agentd.disk.plan import asks_io, io_files
from agentd.disk.stage import IoStage
from agentd.errors import AgentdError, FeatureMissing, PolicyError
from agentd.kernel import blkio
from agentd.kernel import cgroupfs as cgf
from agentd.kernel.fakes import FakeCgroupFS
from agentd.policy.overlay import agent_policy
from agentd.units import parse_byte_rate
from tests.unit import stage_world

GiB = 1 << 30
MiB = 1 << 20

POLICY = """\
version: 1
defaults: {agent_class: low, tool_class: normal}
agent_classes:
  high: {priority: 800, io: {weight: 400}}
  low: {priority: 100, io: {weight: 25, wbps: 40MiB/s}}
tool_classes:
  normal: {priority: 50}
  build: {priority: 20, io: {weight: 50, wbps: 20MiB/s, riops: 1000}}
tool_rules:
  - {name: builds, match: {program: [make]}, class: build}
io:
  devices: [/data, '7:0']
"""


def load(text=POLICY, **kw):
    return stage_world.load(text, **kw)


def problems(text, **kw):
    with pytest.raises(PolicyError) as info:
        load(text, **kw)
    return [str(p) for p in info.value.problems]


# --- units and schema -----------------------------------------------------------------

def test_disk_rates_are_bytes_per_second():
    assert parse_byte_rate("20MiB/s") == parse_byte_rate("20MiB") == 20 * MiB
    assert parse_byte_rate("50M/s") == 50_000_000
    assert parse_byte_rate("2GiBps") == 2 * GiB
    assert parse_byte_rate(4096) == 4096
    assert parse_byte_rate("max") is None
    for bad, says in (("20Mbit", "in bits"), ("20Mbps", "in bits"), ("0", "above 0"), ("fast", "bad disk rate")):
        with pytest.raises(AgentdError, match=says):
            parse_byte_rate(bad)


def test_io_keys_load_into_classes():
    p = load()
    assert p.agent_class("high").io.weight == 400 and p.agent_class("high").io.maxima() is None
    assert p.agent_class("low").io.maxima() == (None, 40 * MiB, None, None)
    assert p.tool_class("build").io.maxima() == (None, 20 * MiB, 1000, None)
    assert p.io.devices == ["/data", "7:0"] and p.io.enable_iocost and p.io.ladder_stall_us is None
    assert asks_io(p) and not asks_io(load("version: 1\n"))


def test_bad_io_keys_name_their_line():
    text = POLICY.replace("wbps: 40MiB/s", "wbps: 40Mbit").replace("riops: 1000", "riops: lots") \
        .replace("weight: 400", "weight: 0").replace("'7:0'", "7:0")
    assert problems(text) == [
        "t.yaml:4: agent_classes.high.io.weight: io weight 0 is out of range: expected 1..10000",
        "t.yaml:5: agent_classes.low.io.wbps: disk rate '40Mbit' is in bits: write bytes per second, e.g. '20MiB/s'",
        "t.yaml:8: tool_classes.build.io.riops: I/O operations per second must be a positive whole number or 'max', "
        "not 'lots'",
        "t.yaml:12: io.devices[1]: block device 420 is a number: YAML reads an unquoted MAJOR:MINOR such as 8:0 as "
        "one (base 60); quote it: '8:0'",
    ]
    assert problems(POLICY.replace("/data", "data")) == [
        "t.yaml:12: io.devices[0]: bad block device 'data': write an absolute path (a file or directory on the disk, "
        "or its /dev node) or MAJOR:MINOR in quotes, e.g. '8:0'"]


def test_maxima_without_a_named_disk_are_an_error_not_a_silent_no_op():
    text = POLICY.replace("io:\n  devices: [/data, '7:0']\n", "")
    assert problems(text) == [
        "t.yaml:5: agent_classes.low.io.wbps: io.wbps limits the disks io.devices names, and it names none: add the "
        "disk (a path on it or MAJOR:MINOR) to io.devices, or remove this key",
        "t.yaml:8: tool_classes.build.io.wbps: io.wbps limits the disks io.devices names, and it names none: add the "
        "disk (a path on it or MAJOR:MINOR) to io.devices, or remove this key",
        "t.yaml:8: tool_classes.build.io.riops: io.riops limits the disks io.devices names, and it names none: add "
        "the disk (a path on it or MAJOR:MINOR) to io.devices, or remove this key",
    ]


def test_a_disk_the_host_lacks_is_an_error_at_its_line_when_the_loader_has_the_resolver():
    def resolve(spec):
        if spec == "7:0":
            raise AgentdError("7:0: there is no block device 7:0 on this host (`lsblk` lists the disks)")
        return blkio.BlockDevice(8, 0, "sda", spec)
    assert problems(POLICY, block_device=resolve) == [
        "t.yaml:12: io.devices[1]: 7:0: there is no block device 7:0 on this host (`lsblk` lists the disks)"]
    load(block_device=lambda spec: blkio.BlockDevice(8, 0, "sda", spec))    # all there: loads


def test_an_agents_own_policy_may_lower_io_but_not_raise_it():
    daemon = load()
    view = agent_policy(daemon, "version: 1\ndefaults: {agent_class: low}\n"
                                "agent_classes:\n  low: {io: {weight: 10, wbps: 10MiB/s}}\n", "mine.yaml")
    assert view.agent_class("low").io.weight == 10 and view.agent_class("low").io.wbps == 10 * MiB
    for over in ("low: {io: {wbps: max}}", "low: {io: {weight: 50}}", "high: {io: {weight: 500}}"):
        with pytest.raises(PolicyError, match="tighten"):
            agent_policy(daemon, f"version: 1\ndefaults: {{agent_class: low}}\nagent_classes:\n  {over}\n", "mine.yaml")
    # Unset is the kernel's 100, not unlimited: a class without a weight cannot be raised past it.
    with pytest.raises(PolicyError, match="tighten"):
        agent_policy(daemon, "version: 1\ntool_classes:\n  normal: {io: {weight: 200}}\n", "mine.yaml")
    with pytest.raises(PolicyError, match="host-wide"):
        agent_policy(daemon, "version: 1\nio: {devices: ['8:0']}\n", "mine.yaml")


PER_DISK = POLICY.replace("build: {priority: 20, io: {weight: 50, wbps: 20MiB/s, riops: 1000}}",
                          "build: {priority: 20, io: {wbps: {/data: 20MiB/s, '7:0': 5MiB/s}, riops: {/data: 1000}}}")


def test_a_class_may_give_each_disk_its_own_maxima():
    p = load(PER_DISK)
    io = p.tool_class("build").io
    assert io.wbps == {"/data": 20 * MiB, "7:0": 5 * MiB} and io.riops == {"/data": 1000}
    assert io.maxima_for(("/data",)) == (None, 20 * MiB, 1000, None)
    assert io.maxima_for(("7:0",)) == (None, 5 * MiB, None, None)
    assert io.maxima_for(("/elsewhere",)) == (None, None, None, None)
    # One disk named twice (a path on it and its MAJOR:MINOR): the lower of its values.
    assert io.maxima_for(("/data", "7:0")) == (None, 5 * MiB, 1000, None)
    # A value for every disk and one per disk mix key by key.
    assert p.agent_class("low").io.maxima_for(("7:0",)) == (None, 40 * MiB, None, None)
    assert asks_io(p)


def test_per_disk_maxima_are_written_per_disk():
    p = load(PER_DISK)
    disks = [blkio.BlockDevice(7, 0, "loop0", "7:0"), blkio.BlockDevice(8, 0, "sda", "/data")]
    assert io_files(p.tool_class("build").io, disks)[blkio.IO_MAX] == (
        "7:0 rbps=max wbps=5242880 riops=max wiops=max\n"
        "8:0 rbps=max wbps=20971520 riops=1000 wiops=max")
    # /data and '7:0' on one disk: its line takes the lower of the two.
    one = [blkio.BlockDevice(7, 0, "loop0", "/data")]
    assert io_files(p.tool_class("build").io, one, {"7:0": ("/data", "7:0")})[blkio.IO_MAX] == \
        "7:0 rbps=max wbps=5242880 riops=1000 wiops=max"


def test_bad_per_disk_maxima_name_their_line():
    def bad(build_io):
        return problems(POLICY.replace("{weight: 50, wbps: 20MiB/s, riops: 1000}", build_io))
    assert bad("{wbps: {/data: 20Mbit}}") == [
        "t.yaml:8: tool_classes.build.io.wbps: disk rate of disk '/data': disk rate '20Mbit' is in bits: write "
        "bytes per second, e.g. '20MiB/s'"]
    assert bad("{wiops: {/data: 0}}") == [
        "t.yaml:8: tool_classes.build.io.wiops: I/O operations per second of disk '/data': I/O operations per "
        "second must be a positive whole number or 'max', not 0"]
    assert bad("{rbps: {data: 1MiB/s}}") == [
        "t.yaml:8: tool_classes.build.io.rbps: disk 'data': bad block device 'data': write an absolute path (a "
        "file or directory on the disk, or its /dev node) or MAJOR:MINOR in quotes, e.g. '8:0'"]
    assert bad("{rbps: {}}") == [
        "t.yaml:8: tool_classes.build.io.rbps: an empty mapping of disks to disk rate limits nothing: name a disk "
        "(e.g. {\"/var\": ...}) or write one disk rate for every disk io.devices names"]
    # A disk io.devices does not list: at the line of the disk itself.
    text = POLICY.replace("build: {priority: 20, io: {weight: 50, wbps: 20MiB/s, riops: 1000}}",
                          "build:\n    priority: 20\n    io:\n      wbps:\n        /data: 1MiB/s\n"
                          "        /dev/vdc: 2MiB/s")
    assert problems(text) == [
        "t.yaml:13: tool_classes.build.io.wbps./dev/vdc: io.wbps names disk '/dev/vdc', which io.devices does not "
        "list ('/data', '7:0'): write it as io.devices does, or add it there (agentd finds the disks it names "
        "once, at load)"]
    # Without the host's disk: an error at its line too (the loader's resolver).
    def resolve(spec):
        if spec == "7:0":
            raise AgentdError("7:0: there is no block device 7:0 on this host (`lsblk` lists the disks)")
        return blkio.BlockDevice(8, 0, "sda", spec)
    assert "tool_classes.build.io.wbps: disk '7:0': 7:0: there is no block device 7:0" in \
        "\n".join(problems(PER_DISK, block_device=resolve))


def test_an_agents_own_policy_may_lower_a_disks_maximum_but_not_raise_it():
    daemon = load(PER_DISK)
    view = agent_policy(daemon, "version: 1\ntool_classes:\n  build: {io: {wbps: {/data: 10MiB/s, '7:0': 5MiB/s}}}\n",
                        "mine.yaml")
    assert view.tool_class("build").io.maxima_for(("/data",))[1] == 10 * MiB
    view = agent_policy(daemon, "version: 1\ntool_classes:\n  build: {io: {wbps: 1MiB/s}}\n", "mine.yaml")
    assert view.tool_class("build").io.maxima_for(("7:0",))[1] == MiB
    for over in ("{wbps: {/data: 30MiB/s, '7:0': 5MiB/s}}", "{wbps: {/data: 10MiB/s}}", "{wbps: 6MiB/s}"):
        with pytest.raises(PolicyError, match="on disk .* is above the daemon's .* tighten") as info:
            agent_policy(daemon, f"version: 1\ntool_classes:\n  build: {{io: {over}}}\n", "mine.yaml")
        assert "mine.yaml:3: tool_classes.build.io.wbps" in str(info.value), str(info.value)
    # A per-disk value under the daemon's one for every disk.
    daemon = load()
    agent_policy(daemon, "version: 1\ndefaults: {agent_class: low}\n"
                         "agent_classes:\n  low: {io: {wbps: {/data: 10MiB/s, '7:0': 40MiB/s}}}\n", "mine.yaml")
    with pytest.raises(PolicyError, match="tighten"):
        agent_policy(daemon, "version: 1\ndefaults: {agent_class: low}\n"
                             "agent_classes:\n  low: {io: {wbps: {/data: 10MiB/s}}}\n", "mine.yaml")


# --- the resolver over a fake /sys/dev/block -------------------------------------------

def fake_sys(tmp_path, disks):
    """disks: {name: (major, minor, [(part name, major, minor)])}; returns /sys/dev/block."""
    devices = tmp_path / "sys" / "devices" / "virtual" / "block"
    dev_block = tmp_path / "sys" / "dev" / "block"
    dev_block.mkdir(parents=True)
    for name, (ma, mi, parts) in disks.items():
        d = devices / name
        (d / "queue").mkdir(parents=True)
        (d / "dev").write_text(f"{ma}:{mi}\n")
        (d / "queue" / "scheduler").write_text("[mq-deadline] none\n")
        os.symlink(d, dev_block / f"{ma}:{mi}")
        for pname, pma, pmi in parts:
            p = d / pname
            p.mkdir()
            (p / "dev").write_text(f"{pma}:{pmi}\n")
            (p / "partition").write_text("1\n")
            os.symlink(p, dev_block / f"{pma}:{pmi}")
    return str(dev_block)


def test_the_resolver_takes_a_path_to_its_disk_and_a_partition_to_the_whole_disk(tmp_path):
    st = os.stat(tmp_path)
    here = (os.major(st.st_dev), os.minor(st.st_dev))
    sysb = fake_sys(tmp_path, {"vdz": (here[0], 99, [("vdz1", *here)]), "loop7": (7, 7, [])})
    # tmp_path's file system lives on "partition vdz1" of this fake tree: its disk is vdz.
    d = blkio.resolve(str(tmp_path), sysb)
    assert (d.major, d.minor, d.name, d.dev) == (here[0], 99, "vdz", f"{here[0]}:99")
    assert blkio.resolve(f"{here[0]}:{here[1]}", sysb).dev == f"{here[0]}:99"
    assert blkio.resolve("7:7", sysb).name == "loop7"
    with pytest.raises(AgentdError, match="no block device 7:8 on this host"):
        blkio.resolve("7:8", sysb)
    with pytest.raises(AgentdError, match="No such file or directory"):
        blkio.resolve(str(tmp_path / "missing"), sysb)
    with pytest.raises(AgentdError, match="not a block device"):
        blkio.resolve("sda", sysb)


def test_the_resolver_refuses_file_systems_without_a_disk_and_character_devices(tmp_path):
    sysb = fake_sys(tmp_path, {})
    with pytest.raises(AgentdError, match="character device, not a disk"):
        blkio.resolve("/dev/null", sysb)
    if os.major(os.stat("/proc").st_dev) == 0:
        with pytest.raises(AgentdError, match="no block device of its own"):
            blkio.resolve("/proc", sysb)


def test_the_resolver_on_this_hosts_root_file_system():
    """The real /sys/dev/block: / is on some disk here (whole, never a partition)."""
    try:
        d = blkio.resolve("/")
    except AgentdError as err:
        pytest.skip(f"/ has no block device here: {err}")
    assert not os.path.exists(os.path.join(blkio.SYS_DEV_BLOCK, d.dev, "partition"))
    assert blkio.resolve(d.dev) == blkio.BlockDevice(d.major, d.minor, d.name, d.dev)


# --- file contents ---------------------------------------------------------------------

def test_io_files_are_what_the_kernel_reads_back():
    p = load()
    disks = [blkio.BlockDevice(7, 0, "loop0", "7:0"), blkio.BlockDevice(8, 0, "sda", "/data")]
    assert io_files(p.tool_class("build").io, disks) == {
        blkio.IO_WEIGHT: "default 50", blkio.IO_BFQ_WEIGHT: "default 50",
        blkio.IO_MAX: "7:0 rbps=max wbps=20971520 riops=1000 wiops=max\n"
                      "8:0 rbps=max wbps=20971520 riops=1000 wiops=max"}
    assert io_files(p.agent_class("high").io, disks) == {blkio.IO_WEIGHT: "default 400",
                                                         blkio.IO_BFQ_WEIGHT: "default 400"}
    assert io_files(p.tool_class("normal").io, disks) == {}
    # bfq takes weights up to 1000 only.
    assert blkio.bfq_weight_value(5000) == "default 1000"


def test_io_stat_and_qos_lines_parse():
    text = ("7:0 rbytes=4096 wbytes=1048576 rios=1 wios=8 dbytes=0 dios=0\n"
            "8:0 rbytes=10 wbytes=20 rios=3 wios=4 dbytes=0 dios=0 cost.vrate=100.00\n")
    assert blkio.stat_totals(text) == {"rbytes": 4106, "wbytes": 1048596, "rios": 4, "wios": 12}
    assert blkio.parse_keyed_lines("8:0 enable=1 ctrl=auto rpct=0.00\n") == \
        {"8:0": {"enable": 1, "ctrl": "auto", "rpct": 0.0}}


def test_a_value_of_several_lines_is_one_write_per_line(tmp_path, monkeypatch):
    """io.max takes one device per write(2): the adapter splits a value of several lines."""
    fs = cgf.CgroupFS(str(tmp_path))
    (tmp_path / "io.max").write_text("")
    (tmp_path / "io.weight").write_text("")
    wrote = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: wrote.append(b) or real(fd, b))
    fs.write("", "io.max", "7:0 wbps=1\n8:0 wbps=2")
    fs.write("", "io.weight", "default 50")
    assert wrote == [b"7:0 wbps=1", b"8:0 wbps=2", b"default 50"]


# --- the stage over the fake cgroup tree ---------------------------------------------------

DISKS = {"/data": blkio.BlockDevice(8, 0, "sda", "/data"), "7:0": blkio.BlockDevice(7, 0, "loop0", "7:0")}


def world(tmp_path, text=POLICY, dry_run=False, qos="8:0 enable=0 ctrl=auto\n7:0 enable=0 ctrl=auto\n",
          schedulers=None):
    fs = FakeCgroupFS(str(tmp_path / "cg"))
    if qos is not None:
        fs.write("", blkio.IO_COST_QOS, qos)
    policy = load(text)
    ctl = stage_world.controller(tmp_path, policy, fs=fs, dry_run=dry_run)
    sysb = fake_sys(tmp_path, {})
    for dev, sched in (schedulers or {}).items():
        q = tmp_path / "sys" / "dev" / "block" / dev / "queue"
        q.mkdir(parents=True)
        (q / "scheduler").write_text(f"mq-deadline [{sched}] none\n")
    app = types.SimpleNamespace(fs=fs, ctl=ctl, policy=policy, dry_run=dry_run)
    stage = IoStage(app, resolve=DISKS.__getitem__, sys_dev_block=sysb)
    ctl.hooks = [stage]
    return ctl, fs, stage, app


def io_writes(fs, cg):
    return {n: v for c, n, v in fs.writes if c == cg and n.startswith("io.")}


def test_agents_and_tool_calls_get_their_class_io_limits(tmp_path):
    ctl, fs, stage, _ = world(tmp_path)
    high = ctl.create_agent("hi", agent_class="high")
    low = ctl.create_agent("lo", agent_class="low")
    assert io_writes(fs, high.cgroup) == {blkio.IO_WEIGHT: "default 400", blkio.IO_BFQ_WEIGHT: "default 400"}
    assert io_writes(fs, low.cgroup) == {
        blkio.IO_WEIGHT: "default 25", blkio.IO_BFQ_WEIGHT: "default 25",
        blkio.IO_MAX: "7:0 rbps=max wbps=41943040 riops=max wiops=max\n8:0 rbps=max wbps=41943040 riops=max wiops=max"}
    assert low.limits_applied[blkio.IO_WEIGHT] == "default 25"      # what status shows
    build_call = ctl.start_tool(low, None, ["make", "-j8"])
    quick = ctl.start_tool(low, None, ["ls"])
    assert io_writes(fs, build_call.cgroup)[blkio.IO_MAX] == \
        "7:0 rbps=max wbps=20971520 riops=1000 wiops=max\n8:0 rbps=max wbps=20971520 riops=1000 wiops=max"
    assert build_call.placement.limits[blkio.IO_WEIGHT] == "default 50"
    assert io_writes(fs, quick.cgroup) == {}
    # Written again (a re-adoption), the same lines in the kernel's order change nothing.
    fs.write(low.cgroup, blkio.IO_MAX, "8:0 rbps=max wbps=41943040 riops=max wiops=max\n"
                                       "7:0 rbps=max wbps=41943040 riops=max wiops=max\n")
    n = len(fs.writes)
    stage.on_agent_start(low)
    assert [w for w in fs.writes[n:] if w[1] == blkio.IO_MAX] == []


def test_iocost_is_turned_on_where_no_weight_counts_and_off_again_at_stop(tmp_path):
    ctl, fs, stage, _ = world(tmp_path, schedulers={"7:0": "bfq"})
    # 8:0 shares by nothing: iocost on; 7:0 runs bfq: left alone.
    assert [(c, n, v) for c, n, v in fs.writes if n == blkio.IO_COST_QOS][1:] == [("", blkio.IO_COST_QOS,
                                                                                   "8:0 enable=1")]
    assert stage.weight_modes == {"8:0": "iocost", "7:0": "bfq"}
    assert stage.modes() == {"io": "mixed"}
    stage.close()
    assert fs.writes[-1] == ("", blkio.IO_COST_QOS, "8:0 enable=0")


def test_a_disk_someone_set_up_is_left_as_it_is(tmp_path):
    ctl, fs, stage, _ = world(tmp_path, qos="8:0 enable=1 ctrl=user\n7:0 enable=1 ctrl=auto\n")
    stage.close()
    assert [w for w in fs.writes if w[1] == blkio.IO_COST_QOS][1:] == []
    assert stage.modes() == {"io": "iocost"}


def test_without_iocost_in_the_kernel_weights_are_said_not_to_count(tmp_path, caplog):
    ctl, fs, stage, _ = world(tmp_path, qos=None)
    assert stage.weight_modes == {"8:0": "none", "7:0": "none"}
    assert sum("io.weight does not count" in r.message for r in caplog.records) == 2
    agent = ctl.create_agent("lo", agent_class="low")
    assert io_writes(fs, agent.cgroup)[blkio.IO_WEIGHT] == "default 25"      # written all the same


def test_a_dry_run_writes_no_io_file_and_turns_nothing_on(tmp_path):
    ctl, fs, stage, _ = world(tmp_path, dry_run=True)
    agent = ctl.create_agent("lo", agent_class="low")
    t = ctl.observe_tool(agent, 4242, ["make"])
    assert t.placement.limits[blkio.IO_WEIGHT] == "default 50"
    assert [w for w in fs.writes if w[1].startswith("io.")][1:] == []       # the fixture's qos only
    assert stage.iocost_on == []


def test_a_reload_that_names_other_disks_resolves_them_again(tmp_path):
    ctl, fs, stage, app = world(tmp_path)
    assert [d.dev for d in stage.devices] == ["7:0", "8:0"]
    app.policy = load(POLICY.replace("[/data, '7:0']", "['7:0', '7:0']"))
    agent = ctl.create_agent("lo", agent_class="low")
    assert io_writes(fs, agent.cgroup)[blkio.IO_MAX] == "7:0 rbps=max wbps=41943040 riops=max wiops=max"


def test_the_stage_is_built_only_where_asked_and_offered(tmp_path):
    ctl, fs, _, app = world(tmp_path)
    assert build(types.SimpleNamespace(fs=fs, ctl=ctl, policy=load("version: 1\n"))) is None
    os.unlink(fs.path(ctl.agents_cgroup, blkio.IO_STAT))
    with pytest.raises(FeatureMissing, match="io controller is not enabled"):
        build(app)


def test_per_agent_io_counters_come_from_io_stat(tmp_path):
    ctl, fs, stage, _ = world(tmp_path)
    agent = ctl.create_agent("lo", agent_class="low")
    fs.write(agent.cgroup, blkio.IO_STAT, "8:0 rbytes=100 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n")
    assert stage.metric_stats() == {"disk_io": {"lo": {"rbytes": 100, "wbytes": 2000, "rios": 1, "wios": 2}}}
    from agentd.metrics.collector import Families
    from agentd.metrics.collector import AgentdCollector
    fams = Families()
    AgentdCollector(types.SimpleNamespace(hooks=[stage]))._stages(fams)
    got = {f.name: [(s.labels, s.value) for s in f.samples] for f in fams}
    assert got["agentd_agent_io_written_bytes"] == [({"agent": "lo"}, 2000.0)]
    assert got["agentd_agent_io_reads"] == [({"agent": "lo"}, 1.0)]


def test_a_what_if_report_prints_io_max_on_one_line():
    from agentd.ui.whatif import _limits
    assert _limits({blkio.IO_MAX: "7:0 rbps=max wbps=1 riops=max wiops=max\n8:0 rbps=max wbps=1 riops=max wiops=max"}) \
        == "io.max 7:0 rbps=max wbps=1 riops=max wiops=max; 8:0 rbps=max wbps=1 riops=max wiops=max"


def test_doctor_says_which_io_mode_would_run_and_why(tmp_path, monkeypatch):
    from agentd import doctor
    monkeypatch.setattr(blkio, "resolve", lambda spec: DISKS[spec])
    monkeypatch.setattr(blkio, "scheduler", lambda dev, sys_dev_block=None: {"7:0": "bfq"}.get(dev, "mq-deadline"))
    (tmp_path / "io.cost.qos").write_text("8:0 enable=0 ctrl=auto\n")
    caps = types.SimpleNamespace(controllers=("memory", "io"), cgroup2_mount=str(tmp_path))

    def mode(text, c=caps):
        p = tmp_path / "p.yaml"
        p.write_text("version: 1\n" + text)
        return doctor._io_mode(str(p), c)
    assert mode("") == {"mode": "off", "reason": "the policy sets no io weight or maximum"}
    assert mode("agent_classes: {normal: {io: {weight: 50}}}\n")["mode"] == "weights"
    m = mode("io: {devices: [/data, '7:0']}\n")
    assert m == {"mode": "io.max", "reason": "/data = sda 8:0 (io.max; weights: iocost to be turned on); "
                                             "7:0 = loop0 7:0 (io.max; weights: bfq)"}
    no_io = types.SimpleNamespace(controllers=("memory",), cgroup2_mount=str(tmp_path))
    assert mode("io: {devices: [/data]}\n", no_io)["mode"] == "off"


def test_a_call_of_a_class_with_per_disk_maxima_gets_each_disks_own_line(tmp_path):
    ctl, fs, stage, app = world(tmp_path, text=PER_DISK)
    low = ctl.create_agent("lo", agent_class="low")
    call = ctl.start_tool(low, None, ["make"])
    assert io_writes(fs, call.cgroup)[blkio.IO_MAX] == \
        "7:0 rbps=max wbps=5242880 riops=max wiops=max\n8:0 rbps=max wbps=20971520 riops=1000 wiops=max"
    # A reload that names /data by its MAJOR:MINOR as well: its per-disk values still find it.
    app.policy = load(PER_DISK.replace("[/data, '7:0']", "[/data, '8:0']").replace("'7:0': 5MiB/s", "'8:0': 5MiB/s"))
    DISKS["8:0"] = blkio.BlockDevice(8, 0, "sda", "8:0")
    try:
        call = ctl.start_tool(low, None, ["make"])
        assert stage.names == {"8:0": ("/data", "8:0")}
        assert io_writes(fs, call.cgroup)[blkio.IO_MAX] == "8:0 rbps=max wbps=5242880 riops=1000 wiops=max"
    finally:
        del DISKS["8:0"]
