"""Blocking client for the daemon's socket, used by the Python CLI."""

import json
import os
import socket

from .. import API_VERSION
from ..errors import AgentdError

DEFAULT_SOCKET = "/run/agentd/agentd.sock"


def socket_path(explicit=None):
    return explicit or os.environ.get("AGENTD_SOCKET") or DEFAULT_SOCKET


class DaemonUnavailable(AgentdError):
    pass


class DaemonHung(DaemonUnavailable):
    """No line from the daemon within the client's timeout (a working daemon sends
    keepalive notices while a request takes long)."""


def reply_timeout():
    """AGENTD_REPLY_TIMEOUT (seconds), as the C launcher reads it; 5 s by default."""
    try:
        v = float(os.environ.get("AGENTD_REPLY_TIMEOUT") or 5.0)
    except ValueError:
        v = 5.0
    return v if 0 < v < 86400 else 5.0


class ReplyError(AgentdError):
    def __init__(self, code, message):
        self.code = code
        super().__init__(message)


class Client:
    def __init__(self, path, timeout=None):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError as err:
            self.sock.close()
            raise DaemonUnavailable(f"no daemon at {path} ({err.strerror})") from None
        self.sock.settimeout(timeout)
        self._buf = b""

    def close(self):
        self.sock.close()

    def send(self, op, **fields):
        try:
            self.sock.sendall((json.dumps({"v": API_VERSION, "op": op, **fields}) + "\n").encode())
        except OSError as err:        # the daemon went away (restart, kill -9)
            raise DaemonUnavailable(f"the daemon at {self.path} went away ({err.strerror})") from None

    def read_line(self):
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise DaemonHung(f"the daemon at {self.path} did not answer within "
                                 f"{self.sock.gettimeout():g} s") from None
            except OSError as err:
                raise DaemonUnavailable(f"the daemon at {self.path} went away ({err.strerror})") from None
            if not chunk:
                raise DaemonUnavailable(f"the daemon at {self.path} closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def call(self, op, on_notice=None, **fields):
        """Send one request; pass notices to `on_notice`; return the final reply or raise ReplyError."""
        self.send(op, **fields)
        while True:
            msg = self.read_line()
            if "notice" in msg:
                # A keepalive says the daemon is still working on the request: no news.
                if on_notice and msg.get("notice") != "keepalive":
                    on_notice(msg)
                continue
            if msg.get("ok"):
                return msg
            err = msg.get("error") or {}
            raise ReplyError(err.get("code", "error"), err.get("message", "request failed"))


def connect(path=None, timeout=None):
    return Client(socket_path(path), timeout)
