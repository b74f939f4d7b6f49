"""The one way a notice reaches a client.

Stages decide and return messages (a Placement's sentences, an actuator record's text);
only the API writes to a connection. The outbox knows which connection started which
tool call, so a notice about a running call (throttled, paused, over its GPU budget) goes
to the launcher that waits for it, and to nobody once that connection is gone.
"""

import logging

from . import protocol

log = logging.getLogger("agentd.api")


class Outbox:
    def __init__(self):
        self.by_tool = {}         # tool key -> the connection that started it

    def bind(self, key, conn):
        self.by_tool[key] = conn

    def unbind(self, key):
        self.by_tool.pop(key, None)

    def tell(self, key, kind, message):
        """A notice about tool call `key` to its client, if one is connected."""
        conn = self.by_tool.get(key)
        if conn is not None and message:
            send(conn, kind, message)

    @staticmethod
    def to(conn):
        """tell(kind, message) for one connection: the pipeline's admit gives it to the stages."""
        return lambda kind, message: send(conn, kind, message)


def send(conn, kind, message):
    try:
        conn.send(protocol.notice(kind, message))
    except Exception as err:          # a vanished client must not stop a decision
        log.debug("notice to pid %s failed: %s", getattr(conn, "pid", "?"), err)
