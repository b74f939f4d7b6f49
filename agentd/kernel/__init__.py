"""The only code that touches /sys, /proc and bpf(2). One adapter per kernel interface."""
