"""Reading a kernel file (cgroupfs, procfs, sysfs) in the fewest system calls.

Python's open() costs a stat, a terminal check and a seek per file on top of open, read
and close; on the per-tool-call path agentd reads a dozen such files, and in a VM every
system call is dear. These read with os.open/os.read only. Errors are the OSError the
caller converts (each adapter says what it was reading).
"""

import os

CHUNK = 65536


def read_bytes(path, limit=-1):
    """The file's bytes (at most `limit` when >= 0), read to EOF or the limit."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks, got = [], 0
        while limit < 0 or got < limit:
            b = os.read(fd, CHUNK if limit < 0 else min(CHUNK, limit - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path, limit=-1):
    """The file's text (UTF-8, as open() would read it on agentd's hosts)."""
    return read_bytes(path, limit).decode()
