"""The ctypes mirror (agentd/kernel/bpf_types.py) must match bpf/agentd.h exactly.

gcc compiles a program that includes agentd.h and prints every constant, struct size
and field offset/size; the header is parsed only to list the names to ask about.
"""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

from agentd.kernel import bpf_types

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "agentd.h")


def _parse(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    defines = re.findall(r"^#define\s+(AGENTD_\w+)\s+\S", text, flags=re.M)
    enums = []
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\}", text, flags=re.S):
        enums += re.findall(r"(AGENTD_\w+)", body)
    structs = {}
    for name, body in re.findall(r"struct\s+(agentd_\w+)\s*\{(.*?)\};", text, flags=re.S):
        fields = re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*;", body)
        structs[name] = fields
    return defines, enums, structs


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to check the agentd.h mirror")
    with open(HEADER) as f:
        defines, enums, structs = _parse(f.read())
    lines = ['#include <stdio.h>', '#include <stddef.h>', f'#include "{os.path.abspath(HEADER)}"',
             "int main(void) {"]
    for name in defines + enums:
        if name == "AGENTD_H":
            continue
        lines.append(f'printf("const {name} %lld\\n", (long long)({name}));')
    for s, fields in structs.items():
        lines.append(f'printf("size {s} %zu\\n", sizeof(struct {s}));')
        for fld in fields:
            lines.append(f'printf("field {s}.{fld} %zu %zu\\n", offsetof(struct {s}, {fld}), '
                         f'sizeof(((struct {s} *)0)->{fld}));')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("contract")
    src, exe = d / "c.c", d / "c"
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    consts, sizes, fields = {}, {}, {}
    for line in out.splitlines():
        kind, name, *vals = line.split()
        if kind == "const":
            consts[name] = int(vals[0])
        elif kind == "size":
            sizes[name] = int(vals[0])
        else:
            fields[name] = (int(vals[0]), int(vals[1]))
    return consts, sizes, fields, structs


def test_constants_match(layout):
    consts = layout[0]
    assert consts, "no constants parsed from agentd.h"
    for name, value in consts.items():
        assert getattr(bpf_types, name) == value, name


def test_every_struct_is_mirrored_with_same_layout(layout):
    _, sizes, fields, structs = layout
    assert set(structs) == {s.__name__ for s in bpf_types.STRUCTS}
    for cls in bpf_types.STRUCTS:
        name = cls.__name__
        assert ctypes.sizeof(cls) == sizes[name], name
        py_fields = [f[0] for f in cls._fields_]
        assert py_fields == structs[name], name
        for fld in py_fields:
            desc = getattr(cls, fld)
            assert (desc.offset, desc.size) == fields[f"{name}.{fld}"], f"{name}.{fld}"
