"""struct_ops support over the libbpf adapter (libbpf.py): the two calls a sched_ext
scheduler needs that the tracing programs do not.

- `set_sleepable(obj, prog)`: libbpf 1.1 (Debian 12) does not know the `struct_ops.s/`
  section prefix (added in 1.2), so a sleepable struct_ops callback (sched_ext's init,
  which creates dispatch queues) is marked with BPF_F_SLEEPABLE here, before load. The
  same call works on every libbpf >= 1.0, so agentd uses it everywhere instead of
  choosing the section name by version.
- `attach_struct_ops(obj, map)`: registers the struct_ops map with the kernel. libbpf
  < 1.2 registers by updating the map (no BPF link; the "link" libbpf returns deletes
  the element on destroy), >= 1.2 creates a real link for `.struct_ops.link` maps; in
  both cases destroying the returned Link unregisters, which is what Object.close()
  does for every link it holds.
"""

import ctypes as _c

from . import libbpf

BPF_F_SLEEPABLE = 1 << 4     # uapi linux/bpf.h

_vp = _c.c_void_p
_SIGNATURES = [
    ("bpf_program__flags", _c.c_uint32, [_vp]),
    ("bpf_program__set_flags", _c.c_int, [_vp, _c.c_uint32]),
    ("bpf_map__attach_struct_ops", _vp, [_vp]),
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


def attach_struct_ops(obj, map_name):
    """Register struct_ops map `map_name` of a loaded `obj`; returns the Link (kept in
    obj.links, so obj.close() unregisters it)."""
    obj._need(True)
    L = _lib()
    m = obj.map(map_name)
    ptr = L.call(f"attaching struct_ops {map_name}", L.dll.bpf_map__attach_struct_ops, m._ptr, check="ptr")
    link = libbpf.Link(ptr, map_name)
    obj.links.append(link)
    return link


def detach(obj, link):
    """Unregister one struct_ops link early (the scheduler stops; the maps stay readable)."""
    if link in obj.links:
        obj.links.remove(link)
    link.destroy()

