"""struct_ops support over the libbpf adapter (libbpf.py): the two calls a sched_ext
scheduler needs that the tracing programs do not.

- `set_sleepable(obj, prog)`: libbpf 1.1 (Debian 12) does not know the `struct_ops.s/`
  section prefix (added in 1.2), so a sleepable struct_ops callback (sched_ext's init,
  which creates dispatch queues) is marked with BPF_F_SLEEPABLE here, before load. The
  same call works on every libbpf >= 1.0, so agentd uses it everywhere instead of
  choosing the section name by version.
- `use_link(obj, map)` before load, `attach_struct_ops(obj, map)` after: registers the
  struct_ops map through a BPF link (BPF_LINK_CREATE, Linux 6.4+), so the kernel
  unregisters it when the last descriptor of the link closes, that is when the daemon
  exits however it exits (SIGKILL, a watchdog's SIGABRT). A map registered by a plain
  map update (what libbpf < 1.2 does for `.struct_ops` maps) stays registered after its
  process died, and the next daemon finds the dead one's scheduler still loaded.
  libbpf >= 1.2 creates the link itself for maps flagged BPF_F_LINK; libbpf 1.1 (Debian
  12) only writes the map's value (with BPF_F_LINK the kernel then loads it without
  registering) and the link is created here. Destroying the returned link unregisters,
  which is what Object.close() does for every link it holds.
"""

import os

import ctypes as _c

from . import libbpf

BPF_F_SLEEPABLE = 1 << 4     # uapi linux/bpf.h
BPF_F_LINK = 1 << 13         # uapi linux/bpf.h: a struct_ops map registered only through a link
BPF_STRUCT_OPS = 44          # uapi enum bpf_attach_type

_vp = _c.c_void_p
_SIGNATURES = [
    ("bpf_program__flags", _c.c_uint32, [_vp]),
    ("bpf_program__set_flags", _c.c_int, [_vp, _c.c_uint32]),
    ("bpf_map__attach_struct_ops", _vp, [_vp]),
    ("bpf_map__map_flags", _c.c_uint32, [_vp]),
    ("bpf_map__set_map_flags", _c.c_int, [_vp, _c.c_uint32]),
    ("bpf_link__disconnect", None, [_vp]),
    ("bpf_link_create", _c.c_int, [_c.c_int, _c.c_int, _c.c_int, _vp]),
]
_bound = False


def _lib():
    global _bound
    L = libbpf.lib()
    if not _bound:
        for name, res, args in _SIGNATURES:
            fn = getattr(L.dll, name)
            fn.restype, fn.argtypes = res, args
        _bound = True
    return L


def set_sleepable(obj, prog_name):
    """Mark program `prog_name` of `obj` (an opened, not yet loaded libbpf.Object) sleepable."""
    obj._need(False)
    L = _lib()
    prog = obj._prog(prog_name)
    flags = L.dll.bpf_program__flags(prog)
    L.call(f"set_flags {prog_name}", L.dll.bpf_program__set_flags, prog, flags | BPF_F_SLEEPABLE)


def use_link(obj, map_name):
    """Flag struct_ops map `map_name` of an opened, not yet loaded `obj` BPF_F_LINK: it will
    be registered through a BPF link that dies with this process (SEC(".struct_ops.link")
    does the same on libbpf >= 1.2; 1.1 does not know that section)."""
    obj._need(False)
    L = _lib()
    m = obj.map(map_name)
    flags = L.dll.bpf_map__map_flags(m._ptr)
    L.call(f"set_map_flags {map_name}", L.dll.bpf_map__set_map_flags, m._ptr, flags | BPF_F_LINK)


class FdLink:
    """A BPF link held by its descriptor alone (created here, not by libbpf): closing the
    last descriptor detaches it, in destroy() or when the process dies."""

    def __init__(self, fd, name):
        self._fd = fd
        self.name = name

    @property
    def fd(self):
        return self._fd

    def destroy(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def attach_struct_ops(obj, map_name):
    """Register struct_ops map `map_name` of a loaded `obj`; returns the link (kept in
    obj.links, so obj.close() unregisters it). A map flagged by use_link() is registered
    through a BPF link on every libbpf version."""
    obj._need(True)
    L = _lib()
    m = obj.map(map_name)
    ptr = L.call(f"attaching struct_ops {map_name}", L.dll.bpf_map__attach_struct_ops, m._ptr, check="ptr")
    if not L.dll.bpf_map__map_flags(m._ptr) & BPF_F_LINK or libbpf.features()["struct_ops_link"]:
        link = libbpf.Link(ptr, map_name)
    else:
        # libbpf 1.1 wrote the value (program fds filled in) and returned a link whose
        # destroy would delete the map element, which a BPF_F_LINK map refuses: drop it
        # without detaching, and create the real link on the map's descriptor.
        L.dll.bpf_link__disconnect(ptr)
        L.bpf_link__destroy(ptr)
        fd = L.call(f"creating the struct_ops link of {map_name}", L.dll.bpf_link_create,
                    m.fd, 0, BPF_STRUCT_OPS, None)
        link = FdLink(fd, map_name)
    obj.links.append(link)
    return link


def detach(obj, link):
    """Unregister one struct_ops link early (the scheduler stops; the maps stay readable)."""
    if link in obj.links:
        obj.links.remove(link)
    link.destroy()

