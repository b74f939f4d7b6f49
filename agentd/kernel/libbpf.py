"""ctypes adapter over the system's libbpf.so.1: the only code that calls bpf(2).

Lifecycle, as libbpf spells it: open an object file -> set read-only config and choose
which programs load -> load (verifier, CO-RE relocation against the running kernel's
BTF) -> attach programs (links) -> poll ring buffers -> destroy links -> close.

Every failure raises BpfError carrying what libbpf logged while the call ran (captured
through libbpf_set_print) and the errno, because libbpf's own message (a verifier log,
a missing BTF type, "Operation not permitted") is what tells a person how to fix it.

The ctypes declarations and the library handle live in libbpf_ctypes.py, shared with
the ring-buffer reader (bpf_ringbuf.py); both are re-exported here.
"""

import ctypes as _c
import errno as _errno
import os

from ..errors import BpfError
from .bpf_ringbuf import RingBuffer  # noqa: F401  (part of this adapter's public face)
from .libbpf_ctypes import LIBBPF_NAMES, format_error, lib, version  # noqa: F401

# bpf_map_update_elem flags (uapi)
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

# enum bpf_attach_type and attach flags (uapi) for programs attached to a cgroup
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 1 << 1


def features():
    """Loader features that depend on the libbpf version, decided in one place.

    struct_ops_link: SEC(".struct_ops.link") and "struct_ops.s/" (sleepable) sections are
    understood (1.2+); before that a loader uses SEC(".struct_ops") and sets
    BPF_F_SLEEPABLE with bpf_program__set_flags before load.
    """
    v = version()
    return {"version": "%d.%d" % v, "struct_ops_link": v >= (1, 2)}


BPF_STATS_RUN_TIME = 0


def enable_stats():
    """Turn on per-program run-time accounting while the returned fd stays open (close it
    to turn it off again); costs a little on every program run, so only for measurement."""
    L = lib()
    return L.call("enabling BPF run-time stats", L.bpf_enable_stats, BPF_STATS_RUN_TIME)


class Map:
    """A BPF map of a loaded object, addressed with ctypes key/value objects."""

    def __init__(self, obj, ptr):
        self._obj = obj
        self._ptr = ptr
        L = lib()
        self.name = L.bpf_map__name(ptr).decode()
        self.key_size = L.bpf_map__key_size(ptr)
        self.value_size = L.bpf_map__value_size(ptr)

    @property
    def fd(self):
        return lib().call(f"map {self.name}: fd", lib().bpf_map__fd, self._ptr)

    def _check(self, key, value=None):
        if _c.sizeof(key) != self.key_size:
            raise BpfError(f"map {self.name}: key is {_c.sizeof(key)} bytes, map wants {self.key_size}")
        if value is not None and _c.sizeof(value) != self.value_size:
            raise BpfError(f"map {self.name}: value is {_c.sizeof(value)} bytes, map wants {self.value_size}")

    def lookup(self, key, value):
        """Fill `value` (a ctypes object) for `key`; False if the key is absent."""
        self._check(key, value)
        ret = lib().bpf_map_lookup_elem(self.fd, _c.byref(key), _c.byref(value))
        if ret == -_errno.ENOENT:
            return False
        if ret < 0:
            raise BpfError(format_error(f"map {self.name}: lookup", -ret, []))
        return True

    def update(self, key, value, flags=BPF_ANY):
        self._check(key, value)
        ret = lib().bpf_map_update_elem(self.fd, _c.byref(key), _c.byref(value), flags)
        if ret < 0:
            hint = "; the map is full" if ret == -_errno.E2BIG else ""
            raise BpfError(format_error(f"map {self.name}: update", -ret, []) + hint)

    def delete(self, key):
        """Delete `key`; False if it was absent."""
        self._check(key)
        ret = lib().bpf_map_delete_elem(self.fd, _c.byref(key))
        if ret == -_errno.ENOENT:
            return False
        if ret < 0:
            raise BpfError(format_error(f"map {self.name}: delete", -ret, []))
        return True

    def keys(self, key_type):
        """Every key, as `key_type` instances (a snapshot; the map may change meanwhile)."""
        out, prev, nxt = [], None, key_type()
        fd = self.fd
        while True:
            ret = lib().bpf_map_get_next_key(fd, _c.byref(prev) if prev is not None else None, _c.byref(nxt))
            if ret == -_errno.ENOENT:
                return out
            if ret < 0:
                raise BpfError(format_error(f"map {self.name}: next key", -ret, []))
            out.append(nxt)
            prev, nxt = nxt, key_type()


def cgroup_prog_ids(cgroup_fd, attach_type, most=64):
    """Kernel ids of the programs attached to the cgroup open as `cgroup_fd` itself
    (not those inherited from its ancestors), for `attach_type`."""
    L = lib()
    ids = (_c.c_uint32 * most)()
    cnt, flags = _c.c_uint32(most), _c.c_uint32(0)
    L.call("querying a cgroup's programs", L.bpf_prog_query, int(cgroup_fd), int(attach_type), 0,
           _c.byref(flags), ids, _c.byref(cnt))
    return list(ids[:cnt.value])


def _fdinfo(fd):
    """{key: value text} of /proc/self/fdinfo/<fd>: what the kernel says about a BPF fd
    (prog_id, map_id, link_id, run_cnt, run_time_ns)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError as err:
        raise BpfError(f"reading fdinfo of fd {fd}: {err.strerror}") from err


def _fd_id(fd, key):
    value = _fdinfo(fd).get(key)
    if value is None:
        raise BpfError(f"fd {fd} has no {key} in fdinfo")
    return int(value.split()[0])


class Link:
    """An attached program; destroy() detaches it."""

    def __init__(self, ptr, name):
        self._ptr = ptr
        self.name = name

    @property
    def fd(self):
        return lib().bpf_link__fd(self._ptr)

    def destroy(self):
        if self._ptr:
            ptr, self._ptr = self._ptr, None
            lib().bpf_link__destroy(ptr)


class Object:
    """One BPF object file: open, configure, load, attach, close.

    Use as a context manager or call close(); close() destroys every link first.
    """

    def __init__(self, path):
        if not os.path.exists(path):
            raise BpfError(f"BPF object {path} is missing; build it with `make -C bpf` "
                           "(or reinstall agentd, which ships the compiled objects)")
        L = lib()
        self.path = path
        self._ptr = L.call(f"opening {path}", L.bpf_object__open_file, path.encode(), None, check="ptr")
        self.loaded = False
        self.links = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _need(self, loaded):
        if self._ptr is None:
            raise BpfError(f"{self.path}: object is closed")
        if self.loaded != loaded:
            raise BpfError(f"{self.path}: only {'after' if loaded else 'before'} load")

    def programs(self):
        """name -> section name, for every program in the object."""
        L, out, p = lib(), {}, None
        while True:
            p = L.bpf_object__next_program(self._ptr, p)
            if not p:
                return out
            out[L.bpf_program__name(p).decode()] = L.bpf_program__section_name(p).decode()

    def _prog(self, name):
        L = lib()
        return L.call(f"{self.path}: program {name}", L.bpf_object__find_program_by_name,
                      self._ptr, name.encode(), check="ptr")

    def set_autoload(self, name, on):
        """Choose, before load, whether program `name` is loaded at all."""
        self._need(False)
        L = lib()
        L.call(f"set_autoload {name}", L.bpf_program__set_autoload, self._prog(name), bool(on))

    def autoloaded(self):
        L = lib()
        return [n for n in self.programs() if L.bpf_program__autoload(self._prog(n))]

    def map(self, name):
        L = lib()
        return Map(self, L.call(f"{self.path}: map {name}", L.bpf_object__find_map_by_name,
                                self._ptr, name.encode(), check="ptr"))

    def set_rodata(self, config):
        """Write `config` (a ctypes Structure) as the object's whole .rodata before load.

        The programs keep their read-only config in one `const volatile` struct, so the
        .rodata section must be exactly that struct: a size mismatch means the object and
        the Python mirror of agentd.h disagree.
        """
        self._need(False)
        L, m = lib(), None
        while True:
            m = L.bpf_object__next_map(self._ptr, m)
            if not m:
                raise BpfError(f"{self.path}: no .rodata section (no const volatile config)")
            if L.bpf_map__name(m).decode().endswith(".rodata"):
                break
        size = _c.c_size_t()
        buf = L.call("rodata initial value", L.bpf_map__initial_value, m, _c.byref(size), check="ptr")
        if size.value != _c.sizeof(config):
            raise BpfError(f"{self.path}: .rodata is {size.value} bytes, {type(config).__name__} is "
                           f"{_c.sizeof(config)}: rebuild the BPF objects (make -C bpf)")
        _c.memmove(buf, _c.byref(config), size.value)

    def load(self):
        self._need(False)
        L = lib()
        L.call(f"loading {os.path.basename(self.path)}", L.bpf_object__load, self._ptr)
        self.loaded = True

    def attach(self, name):
        """Attach program `name` as its section says (tp_btf/, tracepoint/...)."""
        self._need(True)
        L = lib()
        ptr = L.call(f"attaching {name}", L.bpf_program__attach, self._prog(name), check="ptr")
        link = Link(ptr, name)
        self.links.append(link)
        return link

    def prog_id(self, name):
        """The kernel's id of loaded program `name`."""
        self._need(True)
        return _fd_id(lib().bpf_program__fd(self._prog(name)), "prog_id")

    def attach_cgroup(self, name, cgroup_fd, attach_type, flags=BPF_F_ALLOW_MULTI):
        """Attach program `name` to the cgroup open as `cgroup_fd` with bpf(BPF_PROG_ATTACH).

        Unlike a link, this attachment belongs to the cgroup: it stays when this object is
        closed or the process exits, and goes when the cgroup is removed (or on
        detach_cgroup). The kernel refuses one program twice on a cgroup (EINVAL)."""
        self._need(True)
        L = lib()
        prog = self._prog(name)
        L.call(f"attaching {name} to a cgroup", L.bpf_prog_attach, L.bpf_program__fd(prog), int(cgroup_fd),
               int(attach_type), int(flags))

    def attach_cgroup_link(self, name, cgroup_fd):
        """Attach program `name` to the cgroup open as `cgroup_fd` through a BPF link (the
        attach type from its section). Unlike attach_cgroup, the kernel detaches it when
        the link's last fd closes: when this object is closed or the process dies."""
        self._need(True)
        L = lib()
        ptr = L.call(f"attaching {name} to a cgroup", L.bpf_program__attach_cgroup, self._prog(name),
                     int(cgroup_fd), check="ptr")
        link = Link(ptr, name)
        self.links.append(link)
        return link

    def detach_cgroup(self, name, cgroup_fd, attach_type):
        """Detach program `name` from the cgroup open as `cgroup_fd` (ENOENT: not attached)."""
        self._need(True)
        L = lib()
        L.call(f"detaching {name} from a cgroup", L.bpf_prog_detach2, L.bpf_program__fd(self._prog(name)),
               int(cgroup_fd), int(attach_type))

    def kernel_ids(self):
        """{'progs', 'maps', 'links'}: the kernel's ids of this object's loaded parts
        (from /proc/self/fdinfo), so a caller can check that close() released them."""
        self._need(True)
        L = lib()
        out = {"progs": [], "maps": [], "links": []}
        for name in self.autoloaded():
            out["progs"].append(_fd_id(L.bpf_program__fd(self._prog(name)), "prog_id"))
        m = None
        while True:
            m = L.bpf_object__next_map(self._ptr, m)
            if not m:
                break
            out["maps"].append(_fd_id(L.bpf_map__fd(m), "map_id"))
        out["links"] = [_fd_id(link.fd, "link_id") for link in self.links]
        return out

    def prog_stats(self):
        """{program: (run_cnt, run_time_ns)} from fdinfo; zeros unless stats are enabled
        (enable_stats(), or sysctl kernel.bpf_stats_enabled=1)."""
        self._need(True)
        L, out = lib(), {}
        for name in self.autoloaded():
            vals = _fdinfo(L.bpf_program__fd(self._prog(name)))
            out[name] = (int(vals.get("run_cnt", 0)), int(vals.get("run_time_ns", 0)))
        return out

    def detach_all(self):
        while self.links:
            self.links.pop().destroy()

    def close(self):
        if self._ptr is None:
            return
        self.detach_all()
        ptr, self._ptr = self._ptr, None
        lib().bpf_object__close(ptr)

