"""A gate an agent script waits on without starting processes.

With automatic tool-call detection every child of an agent is a tool call, so a wait
loop of `sleep 0.1` would add tool calls the tests do not expect. `read -u 3` on a FIFO
opened read-write is a bash builtin: the agent blocks with no child until `open()`.
"""

import errno
import os

WAIT = 'exec 3<>"$gate"; read -r -u 3 _'


class Gate:
    def __init__(self, path):
        self.path = str(path)
        os.mkfifo(self.path)

    def open(self):
        """Let the waiting agent go on; False when nothing waits (it ended or never came)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno == errno.ENXIO:
                return False
            raise
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return True
