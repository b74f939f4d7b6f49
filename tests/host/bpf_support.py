"""Helpers for the host-tier BPF tests: bpftool views, spawning into a cgroup, event collection."""

import json
import os
import subprocess
import time

from agentd.monitor.events import decode_proc


def bpftool_ids(kind):
    """Ids of every BPF `kind` (prog, map, link) the kernel holds, via bpftool."""
    out = subprocess.run(["bpftool", "-j", kind, "list"], capture_output=True, text=True, check=True).stdout
    return {item["id"] for item in json.loads(out or "[]")}


def wait_released(ids, timeout=5.0):
    """Wait until none of `ids` ({'progs': [...], 'maps': [...], 'links': [...]}) exists."""
    kinds = {"progs": "prog", "maps": "map", "links": "link"}
    deadline = time.monotonic() + timeout
    while True:
        left = {k: set(v) & bpftool_ids(kinds[k]) for k, v in ids.items()}
        if not any(left.values()) or time.monotonic() > deadline:
            return {k: v for k, v in left.items() if v}
        time.sleep(0.05)


def spawn_in(fs, cg, argv, **kw):
    """Start argv inside cgroup `cg` (joins between fork and exec)."""
    procs = fs.path(cg, "cgroup.procs")

    def enter():
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
    return subprocess.Popen(argv, preexec_fn=enter, stdin=subprocess.DEVNULL, **kw)


class Collector:
    """Decoded ProcEvents from a Lifecycle ring buffer."""

    def __init__(self, lifecycle):
        self.events = []
        self.rb = lifecycle.ring_buffer(lambda d: self.events.append(decode_proc(d)))

    def drain(self, until=None, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.rb.poll(50)
            if until is None or until(self.events):
                break
        self.rb.consume()
        return self.events

    def close(self):
        self.rb.close()
