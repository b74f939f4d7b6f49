"""Progress of long replays and benchmarks, on stderr: a bar redrawn in place on a terminal,
a plain line every `every` percent elsewhere (CI logs stay short and readable).

    with Progress(len(traces), "replaying") as p:
        for t in traces:
            ...
            p.advance()
"""

import sys
import time


class Progress:
    def __init__(self, total, label="", out=None, every=10, clock=time.monotonic, width=30):
        self.total = max(int(total), 0)
        self.label = label
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every = every
        self.clock = clock
        self.width = width
        self.done = 0
        self.t0 = clock()
        self._last_pct = 0.0
        self._last_draw = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.finish()

    def line(self):
        pct = 100.0 * self.done / self.total if self.total else 100.0
        el = self.clock() - self.t0
        eta = el * (self.total - self.done) / self.done if self.done else None
        bar = "#" * int(self.width * pct / 100)
        tail = f"eta {eta:.0f}s" if eta is not None and self.done < self.total else f"{el:.1f}s"
        return f"{self.label} [{bar:<{self.width}}] {pct:3.0f}% {self.done}/{self.total} {tail}".strip()

    def advance(self, n=1):
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        pct = 100.0 * self.done / self.total if self.total else 100.0
        now = self.clock()
        if self.tty:
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self.out.write("\r" + self.line())
                self.out.flush()
                self._last_draw = now
        elif pct - self._last_pct >= self.every or self.done == self.total:
            self.out.write(self.line() + "\n")
            self.out.flush()
            self._last_pct = pct - (pct % self.every)

    def finish(self):
        if self.tty:
            self.out.write("\r" + self.line() + "\n")
            self.out.flush()
