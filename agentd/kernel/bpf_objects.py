"""Where the compiled BPF objects live, and the pieces both program wrappers share."""

import ctypes
import os

from . import bpf_types as T

OBJ_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_bpf")


def object_path(name):
    """agentd/_bpf/<name>.bpf.o, built by `make -C bpf` and shipped as package data.
    AGENTD_BPF_DIR points elsewhere (a custom build; fault tests point it at nothing)."""
    return os.path.join(os.environ.get("AGENTD_BPF_DIR") or OBJ_DIR, f"{name}.bpf.o")


class LoadedProgram:
    """What every agentd program wrapper shares: a loaded object with one ring buffer
    map (`EVENTS_MAP`) and a `stats` array; closed once, usable as a context manager."""

    EVENTS_MAP = "events"

    @property
    def events_map(self):
        return self._obj.map(self.EVENTS_MAP)

    def ring_buffer(self, callback):
        """A RingBuffer delivering the program's raw event records (bytes) to `callback`."""
        from . import libbpf
        return libbpf.RingBuffer(self.events_map, callback)

    def stats(self):
        return read_stats(self._obj)

    def close(self):
        self._obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_stats(obj):
    """The `stats` array map of a loaded object as {name: count}."""
    m = obj.map("stats")
    names = {T.AGENTD_STAT_LOST: "lost", T.AGENTD_STAT_STOPPED: "stopped",
             T.AGENTD_STAT_MEM_EVENTS: "mem_events", T.AGENTD_STAT_STOP_SKIPPED: "stop_skipped",
             T.AGENTD_STAT_HELD_FULL: "held_full", T.AGENTD_STAT_RELEASED: "released"}
    out = {}
    for i, name in names.items():
        v = ctypes.c_uint64()
        m.lookup(ctypes.c_uint32(i), v)
        out[name] = v.value
    return out
