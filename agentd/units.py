"""Parsing and printing of sizes ("2Gi", "512M", "25%") and CPU amounts ("150%")."""

import re

from .errors import AgentdError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?|[kmgtp]i?|B)?[bB]?\s*$")
_MULT = {
    None: 1, "B": 1,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}


def parse_size(value, total=None):
    """Bytes from an int, "2Gi", "512M", "1.5G", "max" (None = unlimited) or "25%" of `total`.

    Decimal suffixes (K, M, G) are powers of 10 and binary ones (Ki, Mi, Gi) powers of 2,
    as Kubernetes spells them, so a policy means the same thing on every tool.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise AgentdError(f"size must be a number or a string like '2Gi', not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise AgentdError(f"size must not be negative: {value!r}")
        return int(value)
    s = str(value).strip()
    if s.lower() in ("max", "unlimited", "none"):
        return None
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise AgentdError(f"bad percentage {value!r}: expected e.g. '25%'") from None
        if not 0 < pct <= 100:
            raise AgentdError(f"percentage {value!r} must be in (0, 100]")
        if total is None:
            raise AgentdError(f"percentage {value!r} needs the host's memory size")
        return int(total * pct / 100)
    m = _SIZE_RE.match(s)
    if not m:
        raise AgentdError(
            f"bad size {value!r}: expected bytes or a number with a unit "
            "(K, M, G, T or Ki, Mi, Gi, Ti), e.g. '512Mi', '2G', or 'max'")
    num, unit = m.group(1), m.group(2)
    if unit and unit != "B":
        unit = unit[0].upper() + unit[1:]
    return int(float(num) * _MULT[unit])


def format_size(n):
    """Human size with binary units: 1.5 GiB, 300 MiB. None -> 'max'."""
    if n is None:
        return "max"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_cpu(value):
    """A CPU amount as a fraction of one CPU: "150%" -> 1.5, 2 -> 2.0, "max"/None -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise AgentdError(f"cpu amount must be positive: {value!r}")
        return float(value)
    s = str(value).strip()
    if s.lower() == "max":
        return None
    try:
        if s.endswith("%"):
            v = float(s[:-1]) / 100
        else:
            v = float(s)
    except ValueError:
        raise AgentdError(f"bad cpu amount {value!r}: expected e.g. '150%' or 1.5 (CPUs)") from None
    if v <= 0:
        raise AgentdError(f"cpu amount must be positive: {value!r}")
    return v


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps|b/s|B/s)\s*$", re.IGNORECASE)
_RATE_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_rate(value):
    """Bytes per second from "20Mbit", "1.5Gbit", "100kbit" (bits, as tc spells them; also
    "20Mbps"), "10MB/s" (bytes), or a number of bytes per second; "max" is None (no limit).
    Prefixes are powers of 10, as everywhere in networking."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AgentdError(f"rate must be a number of bytes/s or a string like '20Mbit', not {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise AgentdError(f"rate must be above 0, not {value!r}")
        return int(value)
    s = str(value).strip()
    if s.lower() in ("max", "unlimited", "none"):
        return None
    m = _RATE_RE.match(s)
    if not m:
        raise AgentdError(f"cannot parse rate {value!r}: write e.g. '20Mbit' (bits/s), '2.5MB/s' (bytes/s) or 'max'")
    num, prefix, unit = float(m.group(1)), m.group(2).lower(), m.group(3)
    n = num * _RATE_MULT[prefix]
    if unit != "B/s":
        n /= 8                    # bits
    if n < 1:
        raise AgentdError(f"rate {value!r} is below 1 byte/s")
    return int(n)


_BYTE_RATE_RE = re.compile(r"^\s*(.+?)\s*(?:/s|ps)?\s*$")


def parse_byte_rate(value):
    """Bytes per second for a disk: a size per second, "20MiB/s", "20MiB" or "50M/s"
    (the units of parse_size: Mi is 2^20, M is 10^6), or a number of bytes per second;
    "max" is None (no limit). Bits are refused: disks are measured in bytes."""
    if isinstance(value, str) and re.search(r"bit\s*$|bps\s*$", value.strip(), re.IGNORECASE) \
            and not value.strip().endswith("Bps"):
        raise AgentdError(f"disk rate {value!r} is in bits: write bytes per second, e.g. '20MiB/s'")
    if isinstance(value, str):
        s = value.strip()
        if s.endswith("Bps"):
            s = s[:-2]            # "20MBps": bytes
        m = _BYTE_RATE_RE.match(s)
        value = m.group(1) if m else s
    try:
        n = parse_size(value)
    except AgentdError:
        raise AgentdError(f"bad disk rate {value!r}: write bytes per second with a unit, e.g. '20MiB/s', "
                          "'50M/s' (10^6), or 'max'") from None
    if n is not None and n < 1:
        raise AgentdError(f"disk rate {value!r} must be above 0 bytes/s ('max' for no limit)")
    return n
