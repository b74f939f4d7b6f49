"""Monitors: kernel events (BPF or user-space polling) -> model objects for the layers above."""
