"""Field types of the policy schema, each with the message a policy author needs, and the
base model of every section.

pydantic's own messages ("Input should be less than or equal to 1000") say what is wrong
but not what the value means; these validators say both, and reject the YAML surprises
(`true` where a number belongs, `1.5` for a priority) instead of coercing them.
"""

import re
from typing import Annotated, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from ..errors import AgentdError
from ..units import parse_byte_rate, parse_cpu, parse_rate, parse_size


class Model(BaseModel):
    """The base of every policy model: frozen once loaded, and an unknown key is an error
    (a misspelt key must not become a silently ignored limit)."""
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# Class and rule names become parts of cgroup names (`tools/<seq>-<class>`) and metric
# label values, so they are short and path-safe.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,47}$")
# Program names are compared with the basename of argv[0].
PROGRAM_RE = re.compile(r"^[^/\s\x00]{1,255}$")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ranged_int(lo, hi, what):
    def check(v):
        if not _is_int(v):
            raise ValueError(f"{what} must be a whole number from {lo} to {hi}, not {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{what} {v} is out of range: expected {lo}..{hi}")
        return v
    return Annotated[int, BeforeValidator(check)]


def ranged_float(lo, hi, what, lo_open=False, hi_open=False):
    def check(v):
        if not _is_number(v):
            raise ValueError(f"{what} must be a number, not {v!r}")
        bad_lo = v <= lo if lo_open else v < lo
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            span = f"{left}{lo}, {hi if hi is not None else 'inf'}{right}"
            raise ValueError(f"{what} {v} is out of range: expected a value in {span}")
        return float(v)
    return Annotated[float, BeforeValidator(check)]


def _size(v, info: ValidationInfo):
    """Bytes (None = unlimited); percentages are of the host memory passed at load."""
    if isinstance(v, bool) or not (v is None or isinstance(v, (int, float, str))):
        raise ValueError(f"bad size {v!r}: expected bytes, a size like '512Mi' or '25%', or 'max'")
    if v is None:
        raise ValueError("a size is required here: write a size like '512Mi', '25%', or 'max'")
    host = (info.context or {}).get("host_memory_bytes")
    try:
        return parse_size(v, host)
    except AgentdError as err:
        raise ValueError(str(err)) from None


def _rate(v):
    """Bytes/s (None = no limit) from '20Mbit', '2MB/s' or 'max'. A bare number is
    refused: 20 could be bits or bytes, per second or per minute."""
    if _is_number(v):
        raise ValueError(f"rate {v!r} needs a unit: write e.g. '{v}Mbit' (bits/s) or '{v}MB/s' (bytes/s)")
    try:
        return parse_rate(v)
    except AgentdError as err:
        raise ValueError(str(err)) from None


def _byte_rate(v):
    """Disk bytes/s (None = no limit) from '20MiB/s', '50M/s', a number of bytes/s or 'max'."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"bad disk rate {v!r}: expected bytes/s like '20MiB/s', or 'max'")
    try:
        return parse_byte_rate(v)
    except AgentdError as err:
        raise ValueError(str(err)) from None


def _iops(v):
    if isinstance(v, str) and v.strip().lower() == "max":
        return None
    if not _is_int(v) or v <= 0:
        raise ValueError(f"I/O operations per second must be a positive whole number or 'max', not {v!r}")
    return v


# "major:minor" of a block device, or an absolute path (a file or directory on the disk,
# or its /dev node).
_MAJMIN_RE = re.compile(r"^\d{1,10}:\d{1,10}$")


def is_disk_spec(v):
    """Is `v` a disk in a form the policy takes (checked on its own by _block_device)?"""
    return isinstance(v, str) and bool(_MAJMIN_RE.match(v) or v.startswith("/")) and "\x00" not in v


def _block_device(v, info: ValidationInfo):
    """A disk as the policy names it. Where the loader was given the host's resolver
    (`block_device` in the validation context: the daemon, `agentd policy check`), a
    disk that is not there is an error at its line; the policy stays pure of I/O."""
    if _is_int(v):
        raise ValueError(f"block device {v!r} is a number: YAML reads an unquoted MAJOR:MINOR such as 8:0 as one "
                         "(base 60); quote it: '8:0'")
    if not is_disk_spec(v):
        raise ValueError(f"bad block device {v!r}: write an absolute path (a file or directory on the disk, or "
                         "its /dev node) or MAJOR:MINOR in quotes, e.g. '8:0'")
    resolve = (info.context or {}).get("block_device")
    if resolve is not None:
        try:
            resolve(v)
        except AgentdError as err:
            raise ValueError(str(err)) from None
    return v


def _per_disk(one, what):
    """A disk maximum (`one` parses a value) for every named disk, or a mapping of disks
    (as io.devices names them: a path or MAJOR:MINOR) to their own maxima."""
    def check(v, info: ValidationInfo):
        if not isinstance(v, dict):
            return one(v)
        if not v:
            raise ValueError(f"an empty mapping of disks to {what} limits nothing: name a disk (e.g. "
                             f"{{\"/var\": ...}}) or write one {what} for every disk io.devices names")
        out = {}
        for disk, x in v.items():
            try:
                spec = _block_device(disk, info)
            except ValueError as err:
                raise ValueError(f"disk {disk!r}: {err}") from None
            try:
                out[spec] = one(x)
            except ValueError as err:
                raise ValueError(f"{what} of disk {disk!r}: {err}") from None
        return out
    return check


def _gpu_size(v):
    """GPU sizes are checked now but resolved later: a percentage is of the GPU's memory."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"bad size {v!r}: expected bytes, a size like '8Gi' or '50%', or 'max'")
    try:
        parse_size(v, 1 << 40)
    except AgentdError as err:
        raise ValueError(str(err)) from None
    return v


def _cpu(v):
    try:
        return parse_cpu(v)
    except AgentdError as err:
        raise ValueError(str(err)) from None


def _pids(v):
    if isinstance(v, str) and v.strip().lower() == "max":
        return None
    if not _is_int(v) or v <= 0:
        raise ValueError(f"pids.max must be a positive whole number or 'max', not {v!r}")
    return v


def _name(what):
    def check(v):
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise ValueError(
                f"bad {what} name {v!r}: use a letter then letters, digits, '_', '.' or '-' "
                "(at most 48 characters)")
        return v
    return check


def _name_list(key, example="pytest", allow_empty=False):
    """A list of program (or declared class) names; one bare name reads as a list of one."""
    def check(v):
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise ValueError(f"{key} must be a list of names, not {v!r}")
        if not v and not allow_empty:
            raise ValueError(f"{key} list is empty: name at least one, e.g. [{example}]")
        for p in v:
            if not isinstance(p, str) or not PROGRAM_RE.match(p):
                hint = ""
                if isinstance(p, str) and "/" in p:
                    hint = f" (programs match the basename of argv[0]: write {p.rsplit('/', 1)[-1]!r})"
                raise ValueError(f"bad name {p!r} in {key}{hint}")
        return v
    return check


def _regex(v):
    if not isinstance(v, str):
        raise ValueError(f"argv_regex must be a string, not {v!r}")
    try:
        re.compile(v)
    except re.error as err:
        raise ValueError(f"invalid regex {v!r}: {err}") from None
    return v


def _abs_path(v):
    if not isinstance(v, str) or not v.startswith("/") or "\x00" in v:
        raise ValueError(f"expected an absolute path, not {v!r}")
    return v


# Words that turn the metrics endpoint off, in the policy and on the command line alike.
# YAML 1.1 reads a bare `off` / `no` as false, which means the same.
LISTEN_OFF = ("off", "none", "disabled")


def normalise_listen(v):
    """A metrics listen address: "HOST:PORT" as given, or "" for no endpoint (one of
    LISTEN_OFF, an empty string, false). ValueError names what is accepted."""
    if v is False or v is None or isinstance(v, str) and v.strip().lower() in ("",) + LISTEN_OFF:
        return ""
    m = re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$", v) if isinstance(v, str) else None
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"bad listen address {v!r}: expected HOST:PORT (e.g. 127.0.0.1:9464, :9464) "
                         f"or {', '.join(LISTEN_OFF)} for no metrics endpoint")
    return v


def _listen(v):
    return normalise_listen(v)


Size = Annotated[Optional[int], BeforeValidator(_size)]
Rate = Annotated[Optional[int], BeforeValidator(_rate)]
ByteRate = Annotated[Optional[int], BeforeValidator(_byte_rate)]
Iops = Annotated[Optional[int], BeforeValidator(_iops)]
# One value for every disk io.devices names, or {disk: value} (None = no limit).
DiskByteRate = Annotated[Union[Optional[int], dict[str, Optional[int]]],
                         BeforeValidator(_per_disk(_byte_rate, "disk rate"))]
DiskIops = Annotated[Union[Optional[int], dict[str, Optional[int]]],
                     BeforeValidator(_per_disk(_iops, "I/O operations per second"))]
BlockDeviceSpec = Annotated[str, BeforeValidator(_block_device)]
GpuSize = Annotated[object, BeforeValidator(_gpu_size)]
CpuAmount = Annotated[Optional[float], BeforeValidator(_cpu)]
PidsMax = Annotated[Optional[int], BeforeValidator(_pids)]
Priority = ranged_int(0, 1000, "priority")
Weight = ranged_int(1, 10000, "cpu weight")
ClassName = Annotated[str, BeforeValidator(_name("class"))]
RuleName = Annotated[str, BeforeValidator(_name("rule"))]
ProgramList = Annotated[list[str], BeforeValidator(_name_list("program"))]
OnlyProgramList = Annotated[list[str], BeforeValidator(_name_list("only_programs"))]
DeclaredList = Annotated[list[str], BeforeValidator(_name_list("declared_class", "batch"))]
ProgramNames = Annotated[list[str], BeforeValidator(_name_list("the program list", allow_empty=True))]
Regex = Annotated[str, BeforeValidator(_regex)]
AbsPath = Annotated[str, BeforeValidator(_abs_path)]
ListenAddr = Annotated[str, BeforeValidator(_listen)]
Seconds = ranged_float(0, None, "duration (seconds)")
