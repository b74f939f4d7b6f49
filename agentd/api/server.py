"""asyncio unix-socket server: peer credentials, request dispatch, per-connection state.

Authorisation is decided here from SO_PEERCRED and /proc, never from ids the client sends:
- creating an agent needs uid 0 or membership of the configured group;
- a tool call is created only inside the agent whose cgroup the caller is in, and only for
  a child of the caller that still shares the caller's cgroup;
- freeze/thaw/kill/status reach only the caller's own agent (root/group members: any).
"""

import asyncio
import grp
import logging
import os
import socket
import struct

from ..errors import AgentdError, ProcessGone, RequestError
from . import protocol

log = logging.getLogger("agentd.api")


def peer_cred(sock):
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)      # pid, uid, gid


class Connection:
    def __init__(self, pid, uid, gid, writer):
        self.pid, self.uid, self.gid = pid, uid, gid
        self.writer = writer
        self.tools = set()        # (agent, tool) started on this connection and not done yet
        self.agent = None         # agent created on this connection (run)

    def send(self, data):
        if not self.writer.is_closing():
            self.writer.write(data)


class Server:
    def __init__(self, app, path, group=None):
        self.app = app            # agentd.daemon.App
        self.path = path
        self.group = group
        self._server = None
        self.conns = set()
        self.requests_total = {}
        self.errors_total = {}

    async def start(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=protocol.MAX_LINE)
        # Anyone may connect (agents run as any user); what they may do is decided per
        # request from their credentials.
        os.chmod(self.path, 0o666)

    async def close(self):
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        for c in list(self.conns):
            c.writer.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def is_admin(self, conn):
        if conn.uid == 0:
            return True
        if not self.group:
            return False
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            return False
        if conn.gid == gid:
            return True
        try:
            _, _, groups = self.app.procfs.groups(conn.pid)
        except AgentdError:
            return False
        return gid in groups

    async def _serve(self, reader, writer):
        try:
            pid, uid, gid = peer_cred(writer.get_extra_info("socket"))
        except OSError:
            writer.close()
            return
        conn = Connection(pid, uid, gid, writer)
        self.conns.add(conn)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    conn.send(protocol.error("too_long", f"request longer than {protocol.MAX_LINE} bytes"))
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                await self._one(conn, line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.conns.discard(conn)
            self.app.connection_lost(conn)
            try:
                writer.close()
            except Exception:
                pass

    async def _one(self, conn, line):
        op = "?"
        try:
            req = protocol.parse_request(line)
            op = req["op"]
            reply = await getattr(self.app, "op_" + op)(conn, req)
            conn.send(protocol.ok(**(reply or {})))
        except RequestError as err:
            self.errors_total[err.code] = self.errors_total.get(err.code, 0) + 1
            log.info("request %s from pid %d uid %d refused: %s: %s", op, conn.pid, conn.uid, err.code, err)
            conn.send(protocol.error(err.code, str(err)))
        except ProcessGone as err:
            conn.send(protocol.error("gone", str(err)))
        except AgentdError as err:
            log.warning("request %s from pid %d failed: %s", op, conn.pid, err)
            conn.send(protocol.error("failed", str(err)))
        except Exception as err:      # a bug must not take the daemon down with it
            log.exception("request %s from pid %d crashed", op, conn.pid)
            conn.send(protocol.error("internal", f"internal error: {type(err).__name__}"))
        self.requests_total[op] = self.requests_total.get(op, 0) + 1
