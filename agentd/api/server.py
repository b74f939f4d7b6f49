"""asyncio unix-socket server: peer credentials, request dispatch, per-connection state.

Authorisation is decided here from SO_PEERCRED and /proc, never from ids the client sends.
The peer is held as a pidfd from accept on (SO_PEERPIDFD, agentd.kernel.pidfd): what
/proc says about its pid counts only while that process lives, and a connection whose
process has exited is closed, so a process that later gets the same pid inherits nothing.
- creating an agent needs uid 0 or membership of the configured group, from outside
  every agent: a process inside an agent has that agent's rights only, whatever its uid;
- a tool call is created only inside the agent whose cgroup the caller is in, and only for
  a child of the caller that still shares the caller's cgroup;
- freeze/thaw/kill/status reach only the caller's own agent (root/group members: any).

What a caller may hold is bounded here too (api/guard.py): connections per uid and in all
(below the descriptor limit, with a reserve for the daemon's own files), a first request
within daemon.first_request_timeout_s, idle connections without a tool call or agent
closed after daemon.idle_timeout_s, a caller in no agent and not admin answered once and
dropped, accept() failures backed off, refusals logged at a bounded rate.
"""

import asyncio
import grp
import logging
import os
import socket
import struct

from ..errors import AgentdError, ProcessGone, RequestError
from ..kernel.pidfd import Proc
from . import guard, protocol

log = logging.getLogger("agentd.api")

# A request still running after this long gets a keepalive notice every this often, so
# a client can tell a daemon that works (admission waits, stragglers) from a hung one.
KEEPALIVE_S = 1.0
BACKLOG = 128


def peer_cred(sock):
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)      # pid, uid, gid


class Connection:
    def __init__(self, pid, uid, gid, writer, proc=None):
        self.pid, self.uid, self.gid = pid, uid, gid
        self.proc = proc          # kernel.pidfd.Proc of the peer: the identity every request is checked against
        self.writer = writer
        self.tools = set()        # (agent, tool) started on this connection and not done yet
        self.agent = None         # agent created on this connection (run)

    def send(self, data):
        if not self.writer.is_closing():
            self.writer.write(data)

    def peer_alive(self):
        return self.proc is not None and self.proc.alive()

    def verify_peer(self):
        """Raise ProcessGone unless the connecting process still lives: call it after
        reading anything from /proc/<conn.pid>, so that what was read was the peer's."""
        if self.proc is None:
            raise ProcessGone("the connecting process is not held")
        self.proc.verify()


class Server:
    def __init__(self, app, path, group=None):
        self.app = app            # agentd.daemon.App
        self.path = path
        self.group = group
        self._server = None       # the listening socket
        self._loop = None
        self._accepting = False
        self._backoff = 0.0
        self._tasks = set()
        self.counts = guard.ConnectionCounts()
        self.ratelog = guard.RateLimitedLog(log)
        self.conns = set()
        self.requests_total = {}
        self.errors_total = {}

    def _limits(self):
        return self.app.policy.daemon

    async def start(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            # Anyone may connect (agents run as any user); what they may do is decided per
            # request from their credentials.
            os.chmod(self.path, 0o666)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        self._server = sock
        self._resume()

    # --- accepting: our own loop, so a full descriptor table or a flood is a bounded,
    # quiet state rather than asyncio's per-failure traceback.
    def _resume(self):
        if self._server is not None and not self._accepting:
            self._loop.add_reader(self._server.fileno(), self._accept_ready)
            self._accepting = True

    def _pause(self):
        if self._accepting:
            self._loop.remove_reader(self._server.fileno())
            self._accepting = False

    def _accept_ready(self):
        for _ in range(BACKLOG):
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._accept_failed(err)
                return
            self._backoff = 0.0
            self._admit(sock)

    def _accept_failed(self, err):
        """No descriptor (or memory) for a new connection: stop accepting for a moment,
        longer while it lasts; the kernel's backlog holds the callers meanwhile."""
        self._backoff = min(guard.ACCEPT_BACKOFF_MAX_S, max(guard.ACCEPT_BACKOFF_MIN_S, self._backoff * 2))
        self._pause()
        self._loop.call_later(self._backoff, self._resume)
        self.counts.count_refusal("accept_error")
        self.ratelog("accept", logging.WARNING, "cannot accept API connections (%s): pausing %.2f s; "
                     "%d connections open", err.strerror or err, self._backoff, self.counts.total)

    def _admit(self, sock):
        try:
            sock.setblocking(False)
            _, uid, _ = peer_cred(sock)
        except OSError:
            sock.close()
            return
        reason = self.counts.over(uid, self._limits().max_connections_per_uid)
        if reason is not None:
            self.counts.count_refusal(reason)
            self.ratelog(("refused", reason, uid), logging.WARNING,
                         "API connection from uid %d refused: %s (%d open for this uid, %d in all)", uid,
                         "too many connections for this user" if reason == "per_uid" else "too many connections",
                         self.counts.by_uid.get(uid, 0), self.counts.total)
            try:
                sock.send(protocol.error("too_many_connections",
                                         f"uid {uid} holds too many connections to agentd; close some"
                                         if reason == "per_uid" else "agentd serves too many connections; "
                                                                     "try again later"))
            except OSError:
                pass
            sock.close()
            return
        self.counts.add(uid)
        task = self._loop.create_task(self._connection(sock, uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, sock, uid):
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE)
        except OSError:
            sock.close()
            self.counts.remove(uid)
            return
        try:
            await self._serve(reader, writer)
        finally:
            self.counts.remove(uid)

    def metric_stats(self):
        return {"api_connections_refused": dict(self.counts.refused)}

    async def close(self):
        if self._server:
            self._pause()
            self._server.close()
            self._server = None
        for c in list(self.conns):
            c.writer.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def is_admin(self, conn):
        """Do the peer's credentials name root or the API group? (Where it runs also
        counts: see ApiOps._is_admin.)"""
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
            conn.verify_peer()
        except AgentdError:
            return False
        return gid in groups

    async def _serve(self, reader, writer):
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_cred(sock)
            proc = Proc.of_peer(sock, pid)
        except (OSError, AgentdError):
            writer.close()          # the peer is already gone: nobody to answer
            return
        conn = Connection(proc.pid, uid, gid, writer, proc)
        self.conns.add(conn)
        # A caller in no agent and not admin may ask one thing (hello; anything else is
        # refused) and is then dropped: it has no business holding a connection.
        once = not self._may_stay(conn)
        first = True
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: no task per request line
                    async with asyncio.timeout(self._read_timeout(conn, first)):
                        line = await reader.readline()
                except TimeoutError:
                    self.counts.count_refusal("timeout")
                    self.ratelog(("timeout", conn.uid), logging.INFO, "closing API connection of pid %d uid %d: %s",
                                 conn.pid, conn.uid, "no request" if first else "idle")
                    break
                except (asyncio.LimitOverrunError, ValueError):
                    conn.send(protocol.error("too_long", f"request longer than {protocol.MAX_LINE} bytes"))
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                first = False
                if not conn.peer_alive():
                    # Its pid may already name another process: nothing more is answered.
                    log.info("connection of pid %d closed: the process has exited", conn.pid)
                    break
                await self._one(conn, line)
                # A client that does not read its replies is let go. The reply usually left
                # in full at once: then there is nothing to wait for.
                if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
                    try:
                        async with asyncio.timeout(self._limits().idle_timeout_s):
                            await writer.drain()
                    except TimeoutError:
                        self.counts.count_refusal("timeout")
                        break
                if once:
                    self.counts.count_refusal("not_in_agent")
                    break
        except ConnectionError:
            pass
        finally:
            self.conns.discard(conn)
            self.app.connection_lost(conn)
            proc.close()
            try:
                writer.close()
            except Exception:
                pass

    def _may_stay(self, conn):
        if self.is_admin(conn):
            return True
        try:
            agent, _, _ = self.app._caller_agent(conn)
        except RequestError:
            return False
        return agent is not None

    def _read_timeout(self, conn, first):
        """Seconds to wait for the next request line: a connection that holds a tool call
        or an agent waits as long as they run; any other is closed when idle."""
        d = self._limits()
        if first:
            return d.first_request_timeout_s
        if conn.tools or conn.agent:
            return None
        return d.idle_timeout_s

    def _keepalive(self, conn, box):
        """A timer, not a task: most requests are answered before the first one fires."""
        conn.send(protocol.notice("keepalive", ""))
        box[0] = (self._loop or asyncio.get_running_loop()).call_later(KEEPALIVE_S, self._keepalive, conn, box)

    async def _one(self, conn, line):
        op = "?"
        ka = None
        try:
            req = protocol.parse_request(line)
            op = req["op"]
            ka = [None]
            ka[0] = (self._loop or asyncio.get_running_loop()).call_later(KEEPALIVE_S, self._keepalive, conn, ka)
            reply = await getattr(self.app, "op_" + op)(conn, req)
            conn.send(protocol.ok(**(reply or {})))
        except RequestError as err:
            self.errors_total[err.code] = self.errors_total.get(err.code, 0) + 1
            self.ratelog(("refused", conn.uid), logging.INFO, "request %s from pid %d uid %d refused: %s: %s",
                         op, conn.pid, conn.uid, err.code, err)
            conn.send(protocol.error(err.code, str(err)))
        except ProcessGone as err:
            conn.send(protocol.error("gone", str(err)))
        except AgentdError as err:
            self.ratelog(("failed", conn.uid), logging.WARNING, "request %s from pid %d failed: %s",
                         op, conn.pid, err)
            conn.send(protocol.error("failed", str(err)))
        except Exception as err:      # a bug must not take the daemon down with it
            self.ratelog(("crashed", op), logging.ERROR, "request %s from pid %d crashed", op, conn.pid,
                         exc_info=True)
            conn.send(protocol.error("internal", f"internal error: {type(err).__name__}"))
        finally:
            if ka is not None:
                ka[0].cancel()
        self.requests_total[op] = self.requests_total.get(op, 0) + 1
