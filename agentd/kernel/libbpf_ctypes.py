"""ctypes declarations of the libbpf.so.1 calls agentd makes, and the process-wide handle.

Shared by the parts of the libbpf adapter (libbpf.py: objects, maps, links;
bpf_ringbuf.py: ring buffers), which import from here and never from each other.

libbpf >= 1.0 is required: from 1.0 on every API reports errors the same way (NULL or a
negative errno, with errno set), which the adapter relies on. Debian 12 ships 1.1.
"""

import ctypes
import ctypes.util
import errno as _errno
import os
import threading

from ..errors import BpfError, FeatureMissing

LIBBPF_NAMES = ("libbpf.so.1",)

_c = ctypes
_vp = _c.c_void_p

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

PRINT_FN = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_char_p, _vp)
SAMPLE_FN = _c.CFUNCTYPE(_c.c_int, _vp, _vp, _c.c_size_t)

# (name, restype, argtypes)
_SIGNATURES = [
    ("libbpf_major_version", _c.c_uint32, []),
    ("libbpf_minor_version", _c.c_uint32, []),
    ("libbpf_set_print", _vp, [PRINT_FN]),
    ("bpf_object__open_file", _vp, [_c.c_char_p, _vp]),
    ("bpf_object__load", _c.c_int, [_vp]),
    ("bpf_object__close", None, [_vp]),
    ("bpf_object__find_program_by_name", _vp, [_vp, _c.c_char_p]),
    ("bpf_object__find_map_by_name", _vp, [_vp, _c.c_char_p]),
    ("bpf_object__next_program", _vp, [_vp, _vp]),
    ("bpf_object__next_map", _vp, [_vp, _vp]),
    ("bpf_program__name", _c.c_char_p, [_vp]),
    ("bpf_program__section_name", _c.c_char_p, [_vp]),
    ("bpf_program__set_autoload", _c.c_int, [_vp, _c.c_bool]),
    ("bpf_program__autoload", _c.c_bool, [_vp]),
    ("bpf_program__fd", _c.c_int, [_vp]),
    ("bpf_program__attach", _vp, [_vp]),
    ("bpf_program__attach_cgroup", _vp, [_vp, _c.c_int]),
    ("bpf_link__destroy", _c.c_int, [_vp]),
    ("bpf_prog_attach", _c.c_int, [_c.c_int, _c.c_int, _c.c_int, _c.c_uint]),
    ("bpf_prog_detach2", _c.c_int, [_c.c_int, _c.c_int, _c.c_int]),
    ("bpf_prog_query", _c.c_int, [_c.c_int, _c.c_int, _c.c_uint32, _c.POINTER(_c.c_uint32),
                                  _c.POINTER(_c.c_uint32), _c.POINTER(_c.c_uint32)]),
    ("bpf_link__fd", _c.c_int, [_vp]),
    ("bpf_map__name", _c.c_char_p, [_vp]),
    ("bpf_map__fd", _c.c_int, [_vp]),
    ("bpf_map__initial_value", _vp, [_vp, _c.POINTER(_c.c_size_t)]),
    ("bpf_map__key_size", _c.c_uint32, [_vp]),
    ("bpf_map__value_size", _c.c_uint32, [_vp]),
    ("bpf_map_lookup_elem", _c.c_int, [_c.c_int, _vp, _vp]),
    ("bpf_map_update_elem", _c.c_int, [_c.c_int, _vp, _vp, _c.c_uint64]),
    ("bpf_map_delete_elem", _c.c_int, [_c.c_int, _vp]),
    ("bpf_map_get_next_key", _c.c_int, [_c.c_int, _vp, _vp]),
    ("bpf_enable_stats", _c.c_int, [_c.c_int]),
    ("ring_buffer__new", _vp, [_c.c_int, SAMPLE_FN, _vp, _vp]),
    ("ring_buffer__add", _c.c_int, [_vp, _c.c_int, SAMPLE_FN, _vp]),
    ("ring_buffer__poll", _c.c_int, [_vp, _c.c_int]),
    ("ring_buffer__consume", _c.c_int, [_vp]),
    ("ring_buffer__epoll_fd", _c.c_int, [_vp]),
    ("ring_buffer__free", None, [_vp]),
]


class _Lib:
    """The loaded library plus the message capture shared by every call."""

    def __init__(self, path):
        self.path = path
        self.dll = _c.CDLL(path, use_errno=True)
        for name, res, args in _SIGNATURES:
            fn = getattr(self.dll, name)
            fn.restype, fn.argtypes = res, args
            setattr(self, name, fn)
        self.version = (self.libbpf_major_version(), self.libbpf_minor_version())
        if self.version < (1, 0):
            raise FeatureMissing(
                f"libbpf {self.version[0]}.{self.version[1]} at {path} is too old; agentd needs >= 1.0 "
                "(Debian/Ubuntu package libbpf1)")
        libc = _c.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.restype = _c.c_int
        self._vsnprintf.argtypes = [_c.c_char_p, _c.c_size_t, _c.c_char_p, _vp]
        self._local = threading.local()
        self._print_cb = PRINT_FN(self._on_print)  # kept alive for the process lifetime
        self.libbpf_set_print(self._print_cb)

    def _on_print(self, level, fmt, ap):
        # va_list is passed as a pointer on x86_64 and arm64, which vsnprintf accepts.
        buf = _c.create_string_buffer(1024)
        self._vsnprintf(buf, len(buf), fmt, ap)
        log = getattr(self._local, "log", None)
        if log is not None and level <= LIBBPF_INFO:
            line = buf.value.decode(errors="replace").rstrip("\n")
            log.append(line[len("libbpf: "):] if line.startswith("libbpf: ") else line)
        return 0

    def call(self, what, fn, *args, check="int"):
        """Run one libbpf call; raise BpfError with libbpf's messages on failure."""
        self._local.log = []
        _c.set_errno(0)
        try:
            ret = fn(*args)
            err = _c.get_errno()
            log = self._local.log
        finally:
            self._local.log = None
        failed = (not ret) if check == "ptr" else (ret < 0)
        if failed:
            code = -ret if check == "int" and ret < 0 else (err or _errno.EINVAL)
            exc = BpfError(format_error(what, code, log))
            exc.errno = code          # for callers that expect one errno (EEXIST, ENOENT)
            raise exc
        return ret


def format_error(what, code, log):
    msg = f"{what}: {os.strerror(code)} (errno {code})"
    if code in (_errno.EPERM, _errno.EACCES):
        msg += "; agentd needs CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN) to load BPF programs"
    tail = [line for line in log if line.strip()][-25:]
    if tail:
        msg += "\nlibbpf: " + "\nlibbpf: ".join(tail)
    return msg


_lib = None
_lib_lock = threading.Lock()


def lib():
    """The process-wide libbpf handle; FeatureMissing if libbpf.so.1 is absent or too old."""
    global _lib
    with _lib_lock:
        if _lib is None:
            last = None
            for name in LIBBPF_NAMES:
                try:
                    _lib = _Lib(name)
                    break
                except OSError as err:
                    last = err
            else:
                raise FeatureMissing(
                    f"cannot load libbpf.so.1 ({last}); install the libbpf1 package") from last
        return _lib


def version():
    """(major, minor) of the loaded libbpf."""
    return lib().version
