"""Validation of every client-supplied name that becomes part of a cgroup path."""

import re

from .errors import RequestError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_LEN = 63


def check_name(value, what="name"):
    """Return `value` if it is a safe single path component, else raise RequestError.

    Refuses '/', '..', NUL, leading dots/dashes, control characters and anything over
    63 bytes, so a name can never climb out of its parent or collide with cgroupfs's
    own "cgroup.*" / "memory.*" files (a dot never follows an alphanumeric prefix that
    matches a controller name here because controller files live only as files, and
    agentd only ever creates directories; still, names equal to a controller file
    prefix are refused for clarity).
    """
    if not isinstance(value, str):
        raise RequestError("bad_name", f"{what} must be a string")
    if not _NAME_RE.match(value) or ".." in value:
        raise RequestError(
            "bad_name",
            f"invalid {what} {value[:80]!r}: use 1-{MAX_LEN} letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', '..', spaces or control characters)")
    if value.split(".", 1)[0] in ("cgroup", "memory", "cpu", "io", "pids", "cpuset", "hugetlb", "rdma", "misc"):
        raise RequestError("bad_name", f"invalid {what} {value!r}: reserved cgroupfs prefix")
    return value
