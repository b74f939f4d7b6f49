"""The device guard's configuration: which majors hide the NVIDIA GPUs, read from a
/proc/devices fixture (the host tier attaches the real program)."""

import pytest

from agentd.errors import KernelError
from agentd.kernel.bpf_devguard import NVIDIA_MAJOR, _config, char_majors, nvidia_majors

PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
195 nvidia
195 nvidia-modeset
236 nvidia-uvm
237 nvidia-caps
254 gpiochip

Block devices:
  7 loop
236 nvidia-uvm-block-not-a-thing
"""


def proc(tmp_path, text):
    (tmp_path / "devices").write_text(text)
    return str(tmp_path)


def test_nvidia_uvm_major_is_read_from_the_character_section(tmp_path):
    root = proc(tmp_path, PROC_DEVICES)
    majors = char_majors(root)
    assert majors["nvidia-uvm"] == 236 and majors["nvidia"] == 195 and "loop" not in majors
    assert nvidia_majors(root) == [NVIDIA_MAJOR, 236]


def test_without_the_uvm_module_only_the_fixed_major(tmp_path):
    assert nvidia_majors(proc(tmp_path, "Character devices:\n  1 mem\n\nBlock devices:\n  7 loop\n")) == [195]


def test_unreadable_proc_devices_is_a_kernel_error(tmp_path):
    with pytest.raises(KernelError, match="devices"):
        nvidia_majors(str(tmp_path / "nope"))


def test_config_carries_the_majors():
    cfg = _config([195, 236])
    assert cfg.nr_majors == 2 and list(cfg.majors)[:3] == [195, 236, 0]
