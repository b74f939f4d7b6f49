"""`agentd events`: print the event log, optionally follow it across rotations."""

import json
import os
import time

from ..eventlog import read_events
from .table import event_line


def render(rec, as_json):
    return json.dumps(rec, separators=(",", ":")) if as_json else event_line(rec)


def matches(rec, agent, kinds):
    return (not agent or rec.get("agent") == agent) and (not kinds or rec.get("event") in kinds)


def follow(path, agent=None, kinds=None, as_json=False, out=print, poll_s=0.2, stop=None, from_start=False):
    """Print new events as they are appended; reopen when the file is rotated or truncated."""
    f = ino = None
    pos = 0
    while stop is None or not stop():
        if f is None:
            try:
                f = open(path)
                ino = os.fstat(f.fileno()).st_ino
                if not from_start:
                    f.seek(0, 2)
                pos = f.tell()
            except FileNotFoundError:
                time.sleep(poll_s)
                continue
        line = f.readline()
        if line.endswith("\n"):
            pos = f.tell()
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if matches(rec, agent, kinds):
                out(render(rec, as_json))
            continue
        f.seek(pos)                 # a partial line: read it again once complete
        try:
            st = os.stat(path)
            rotated = st.st_ino != ino or st.st_size < pos
        except FileNotFoundError:
            rotated = True
        if rotated:
            f.close()
            f, from_start = None, True
        time.sleep(poll_s)
    if f:
        f.close()


def print_events(path, agent=None, kinds=None, as_json=False, out=print, last=None):
    recs = [r for r in read_events(path, agent=agent) if matches(r, None, kinds)]
    if last is not None:
        recs = recs[-last:] if last > 0 else []
    for rec in recs:
        out(render(rec, as_json))
    return len(recs)
