"""Monitors: kernel events (BPF or user-space polling) -> model objects for the layers above."""

from ..kernel.bpf_probe import bpf_status

__all__ = ["bpf_status"]
