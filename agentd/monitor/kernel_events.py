"""One front for the kernel event sources: BPF programs when they load, polling otherwise.

The daemon builds one EventMonitor, registers `fileno()` with its asyncio loop
(loop.add_reader(mon.fileno(), mon.on_readable)) and calls `tick()` from a periodic
task; listeners get ProcEvents and MemEvents either way. `mode`/`reason` say which
source is active and why, for `agentd doctor`.
"""

import logging

from ..errors import AgentdError
from ..kernel.bpf_probe import bpf_status
from .events import decode_mem, decode_proc
from .memwatch_poll import PollMemWatch

log = logging.getLogger(__name__)


class EventMonitor:
    # The lifecycle program wakes the reader only when this much is waiting (or at once
    # for a task stopped at exec); tick() drains the rest. bench/forkexec.py: a wake-up per
    # event cost ~5-15 us of IPI in this VM, ~8x the program itself.
    BATCH_BYTES = 65536

    def __init__(self, cgroups, mode="auto", mem_window_s=0.25, batch_bytes=BATCH_BYTES):
        """mode: "auto" (BPF if it loads), "bpf" (fail if not) or "userspace".
        batch_bytes=0 wakes the reader on every event (lowest latency)."""
        self.cgroups = cgroups
        self.proc_listeners = []
        self.mem_listeners = []
        self.lifecycle = None
        self.memwatch = None
        self._rb = None
        self.mode, self.reason = "userspace", "requested"
        self.mem_mode, self.mem_reason = "userspace", "requested"
        if mode in ("auto", "bpf"):
            try:
                self._start_bpf(batch_bytes)
                self.mode = "bpf"
                self.reason = f"lifecycle program attached ({self.lifecycle.flavour})"
            except AgentdError as err:
                self.close()
                if mode == "bpf":
                    raise
                self.reason = f"BPF unavailable, polling /proc: {err}"
                log.warning("%s", self.reason)
        if self.mode == "bpf":
            # Separately: memwatch needs newer kernel layouts (rss_stat as percpu_counter,
            # 6.2+) than the lifecycle program, so it may fail alone.
            try:
                from ..kernel.bpf_memwatch import MemWatch
                self.memwatch = MemWatch(window_s=mem_window_s)
                self._rb.add(self.memwatch.events_map, self._on_mem_raw)
                self.mem_mode, self.mem_reason = "bpf", "memory-watch program attached (rss_stat)"
            except AgentdError as err:
                if self.memwatch:
                    self.memwatch.close()
                self.memwatch = None
                if mode == "bpf":
                    self.close()
                    raise
                self.mem_reason = f"memory-watch program unavailable, polling /proc: {err}"
                log.warning("%s", self.mem_reason)
        elif mode == "userspace":
            self.mem_reason = "requested"
        else:
            self.mem_reason = self.reason
        if self.memwatch is None:
            self.memwatch = PollMemWatch(cgroups, self._emit_mem, window_s=mem_window_s)

    def _start_bpf(self, batch_bytes):
        from ..kernel.bpf_lifecycle import Lifecycle
        self.lifecycle = Lifecycle(batch_bytes=batch_bytes)
        self._rb = self.lifecycle.ring_buffer(self._on_proc_raw)

    def _on_proc_raw(self, data):
        ev = decode_proc(data)
        for fn in self.proc_listeners:
            fn(ev)

    def _on_mem_raw(self, data):
        self._emit_mem(decode_mem(data))

    def _emit_mem(self, ev):
        for fn in self.mem_listeners:
            fn(ev)

    def fileno(self):
        """The epoll fd to watch for readability (BPF mode), else None."""
        return self._rb.epoll_fd if self._rb else None

    def on_readable(self):
        """Drain the ring buffers; call when fileno() is readable."""
        return self._rb.consume() if self._rb else 0

    def poll(self, timeout_ms):
        """Blocking wait for events (tests, benchmarks); BPF mode only."""
        return self._rb.poll(timeout_ms) if self._rb else 0

    def tick(self):
        """Periodic work (every ~50-100 ms): drain batched BPF events; in userspace mode
        sample memory instead (autodetect has its own reconcile())."""
        if self.mem_mode == "userspace":
            self.memwatch.poll()
        self.on_readable()

    def status(self):
        st = {"mode": self.mode, "reason": self.reason, "mem_mode": self.mem_mode, "mem_reason": self.mem_reason}
        if self.lifecycle:
            st["lifecycle"] = self.lifecycle.stats()
        return st

    def close(self):
        if self._rb:
            self._rb.close()
            self._rb = None
        for prog in (self.lifecycle, getattr(self.memwatch, "close", None) and self.memwatch):
            if prog:
                prog.close()
        self.lifecycle = None
        self.memwatch = None


__all__ = ["EventMonitor", "bpf_status"]
