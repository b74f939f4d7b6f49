"""The ctypes mirror (agentd/kernel/bpf_scx_types.py) against bpf/scx_agentd.h, compiled by gcc."""

import ctypes
import os
import shutil
import subprocess

import pytest

from agentd.kernel import bpf_scx_types as contract

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(REPO, "bpf", "scx_agentd.h")

CONSTANTS = {
    "SCX_AGENTD_MAX_AGENTS": contract.MAX_AGENTS, "SCX_AGENTD_MAX_CGROUPS": contract.MAX_CGROUPS,
    "SCX_AGENTD_MAX_CPUS": contract.MAX_CPUS, "SCX_AGENTD_WEIGHT_DFL": contract.WEIGHT_DFL,
    "SCX_AGENTD_DSQ_INTERACTIVE": contract.DSQ_INTERACTIVE, "SCX_AGENTD_DSQ_AGENT_BASE": contract.DSQ_AGENT_BASE,
    "SCX_AGENTD_LAT_INTERACTIVE": contract.LAT_INTERACTIVE, "SCX_AGENTD_LAT_NORMAL": contract.LAT_NORMAL,
    "SCX_AGENTD_LAT_BATCH": contract.LAT_BATCH, "SCX_AGENTD_NR_LAT": contract.NR_LAT,
    "SCX_AGENTD_NR_STATS": contract.NR_STATS, "SCX_AGENTD_EXIT_REASON_LEN": contract.EXIT_REASON_LEN,
    "SCX_AGENTD_EXIT_MSG_LEN": contract.EXIT_MSG_LEN,
}
STAT_NAMES = ["SCX_AGENTD_STAT_" + s.upper() for s in contract.STATS]


def _program():
    lines = ['#include <stdio.h>', '#include <stddef.h>', f'#include "{HEADER}"', "int main(void) {"]
    for name in CONSTANTS:
        lines.append(f'printf("const {name} %lld\\n", (long long){name});')
    for i, name in enumerate(STAT_NAMES):
        lines.append(f'printf("stat {name} %lld\\n", (long long){name});')
    for cname, cls in contract.STRUCTS.items():
        lines.append(f'printf("size {cname} %zu\\n", sizeof(struct {cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("off {cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    lines.append("return 0; }")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed to check the BPF contract (apt-get install gcc)"
    d = tmp_path_factory.mktemp("scxc")
    src, exe = d / "c.c", d / "c"
    src.write_text(_program())
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    out = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        kind, name, value = line.split()
        out[(kind, name)] = int(value)
    return out


def test_constants_match_the_header(facts):
    for name, value in CONSTANTS.items():
        assert facts[("const", name)] == value, name


def test_stat_indices_match_the_header(facts):
    for i, name in enumerate(STAT_NAMES):
        assert facts[("stat", name)] == i, name


@pytest.mark.parametrize("cname", sorted(contract.STRUCTS))
def test_struct_layout_matches_the_header(facts, cname):
    cls = contract.STRUCTS[cname]
    assert facts[("size", cname)] == ctypes.sizeof(cls)
    for field, _ in cls._fields_:
        assert facts[("off", f"{cname}.{field}")] == getattr(cls, field).offset, f"{cname}.{field}"


def test_exit_info_describes_the_kernel_reason():
    info = contract.ExitInfo(kind=1026, exit_code=0, reason=b"runnable task stall", msg=b"task 42 stalled for 10s")
    assert info.describe() == "stall (watchdog): runnable task stall: task 42 stalled for 10s"
