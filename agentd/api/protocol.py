"""Wire format of the API, version 1.

Every request is one JSON object on one line: {"v": 1, "op": "<name>", ...}.
The daemon answers with zero or more notice lines {"v": 1, "notice": KIND, "message": TEXT}
and then one final line {"v": 1, "ok": true, ...} or
{"v": 1, "ok": false, "error": {"code": CODE, "message": TEXT}}.
A connection may carry several requests in turn; a tool call's connection stays open
while the tool runs so the daemon can push notices (throttled, frozen, ...).
"""

import json

from .. import API_VERSION
from ..errors import RequestError
from ..names import check_name

MAX_LINE = 256 * 1024          # a request line longer than this is refused, not buffered
MAX_ARGV = 4096
MAX_ARG_LEN = 128 * 1024

# op -> {field: (type(s), required)}
_STR = (str,)
_OPT_STR = (str, type(None))
SCHEMA = {
    "hello": {},
    "run_start": {"pid": (int, True), "name": (_OPT_STR, False), "class": (_OPT_STR, False),
                  "policy": (_OPT_STR, False), "policy_text": (_OPT_STR, False), "argv": (list, False)},
    "run_done": {"agent": (_STR, True), "status": ((dict, type(None)), False)},
    # Without "pid" the daemon makes the cgroup and replies with its "path"; the client
    # clones straight into it, or sends tool_attach with the pid of a held child.
    "tool_start": {"pid": (int, False), "argv": (list, True), "class": (_OPT_STR, False),
                   "mem": ((str, int, type(None)), False), "intent": (_OPT_STR, False), "cwd": (_OPT_STR, False)},
    "tool_attach": {"agent": (_STR, True), "tool": (_STR, True), "pid": (int, True)},
    "tool_done": {"agent": (_STR, True), "tool": (_STR, True), "status": ((dict, type(None)), False),
                  "wall_s": ((int, float), False), "utime_s": ((int, float), False),
                  "stime_s": ((int, float), False), "maxrss_kb": (int, False)},
    "status": {"agent": (_OPT_STR, False)},
    "reload": {},
    "freeze": {"agent": (_STR, True), "tool": (_STR, True)},
    "thaw": {"agent": (_STR, True), "tool": (_STR, True)},
    "kill": {"agent": (_STR, True), "tool": (_STR, True)},
}


def _types(t):
    return t if isinstance(t, tuple) else (t,)


def parse_request(line):
    """Parse and validate one request line; raise RequestError with a specific code."""
    if isinstance(line, bytes):
        if len(line) > MAX_LINE:
            raise RequestError("too_long", f"request longer than {MAX_LINE} bytes")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("bad_json", "request is not valid UTF-8") from None
    try:
        req = json.loads(line)
    except ValueError as err:
        raise RequestError("bad_json", f"request is not valid JSON: {err}") from None
    if not isinstance(req, dict):
        raise RequestError("bad_request", "request must be a JSON object")
    v = req.get("v")
    if v != API_VERSION:
        raise RequestError("bad_version", f"unsupported API version {v!r}; this daemon speaks v{API_VERSION}")
    op = req.get("op")
    if not isinstance(op, str) or op not in SCHEMA:
        raise RequestError("bad_op", f"unknown op {op!r}; known: {', '.join(sorted(SCHEMA))}")
    fields = SCHEMA[op]
    for key in req:
        if key not in fields and key not in ("v", "op"):
            raise RequestError("bad_field", f"op {op!r} has no field {key!r}")
    for key, (typ, required) in fields.items():
        if key not in req:
            if required:
                raise RequestError("missing_field", f"op {op!r} needs field {key!r}")
            continue
        val = req[key]
        types = _types(typ)
        if isinstance(val, bool) and bool not in types:
            raise RequestError("bad_field", f"field {key!r} has the wrong type")
        if not isinstance(val, types):
            raise RequestError("bad_field", f"field {key!r} has the wrong type ({type(val).__name__})")
    if "pid" in req and not 0 < req["pid"] < 2**22:
        raise RequestError("bad_field", "field 'pid' is out of range")
    if "argv" in req:
        argv = req["argv"]
        if op == "tool_start" and not argv:
            raise RequestError("bad_field", "field 'argv' must not be empty")
        if len(argv) > MAX_ARGV or not all(isinstance(a, str) and len(a) <= MAX_ARG_LEN for a in argv):
            raise RequestError("bad_field", "field 'argv' must be a list of strings")
        if any("\0" in a for a in argv):
            raise RequestError("bad_field", "field 'argv' must not contain NUL")
    # Every name that can become part of a cgroup path is checked here, once, before any
    # handler sees it.
    for key in ("agent", "tool", "name", "class"):
        if isinstance(req.get(key), str):
            check_name(req[key], key)
    status = req.get("status")
    if isinstance(status, dict):
        ok = (set(status) == {"exit"} and isinstance(status["exit"], int) and not isinstance(status["exit"], bool)) or \
             (set(status) == {"signal"} and isinstance(status["signal"], int) and not isinstance(status["signal"], bool))
        if not ok:
            raise RequestError("bad_field", "field 'status' must be {\"exit\": N} or {\"signal\": N}")
    return req


def encode(obj):
    return (json.dumps({"v": API_VERSION, **obj}, separators=(",", ":"), default=str) + "\n").encode()


def ok(**fields):
    return encode({"ok": True, **fields})


def error(code, message):
    return encode({"ok": False, "error": {"code": code, "message": message}})


def notice(kind, message):
    # Notices name the agent's program (argv) and are printed on its terminal as they are.
    from ..ui.text import printable
    return encode({"notice": kind, "message": printable(message)})
