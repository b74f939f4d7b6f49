"""libbpf ring_buffer reader (part of the libbpf adapter; see libbpf.py)."""

import ctypes as _c
import errno as _errno

from ..errors import BpfError
from .libbpf_ctypes import SAMPLE_FN, format_error, lib


class RingBuffer:
    """libbpf ring_buffer over one or more ring-buffer maps.

    `callback(data: bytes)` runs inside consume()/poll() for every record. To integrate
    with asyncio, register `epoll_fd` with loop.add_reader and call consume() when it
    is readable. An exception raised by a callback stops that consume() and is re-raised
    from it after libbpf returns.
    """

    def __init__(self, map_, callback):
        L = lib()
        self._cbs = []
        self._error = None
        cb = self._wrap(callback)
        self._ptr = L.call(f"ring buffer on {map_.name}", L.ring_buffer__new, map_.fd, cb, None, None,
                           check="ptr")

    def _wrap(self, callback):
        def sample(_ctx, data, size):
            try:
                callback(_c.string_at(data, size))
            except BaseException as err:  # re-raised from consume(), never through C
                self._error = err
                return -1
            return 0
        cb = SAMPLE_FN(sample)
        self._cbs.append(cb)  # libbpf keeps the raw pointer
        return cb

    def add(self, map_, callback):
        L = lib()
        L.call(f"ring buffer add {map_.name}", L.ring_buffer__add, self._ptr, map_.fd, self._wrap(callback),
               None)

    @property
    def epoll_fd(self):
        return lib().ring_buffer__epoll_fd(self._ptr)

    def _run(self, fn, *args):
        if self._ptr is None:
            raise BpfError("ring buffer is closed")
        ret = fn(self._ptr, *args)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret < 0 and ret != -_errno.EINTR:
            raise BpfError(format_error("ring buffer", -ret, []))
        return max(ret, 0)

    def consume(self):
        """Handle every record available now, without blocking; returns how many."""
        return self._run(lib().ring_buffer__consume)

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for records and handle them; returns how many."""
        return self._run(lib().ring_buffer__poll, int(timeout_ms))

    def close(self):
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            lib().ring_buffer__free(ptr)
