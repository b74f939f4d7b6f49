"""The real daemon speaks sd_notify as the unit expects: READY, WATCHDOG from its loop, RELOADING, STOPPING."""

import signal
import socket
import time

from tests.helpers import DaemonProc


def test_daemon_notifies_and_pings_the_watchdog(tmp_path, test_root):
    path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(0.2)
    # WATCHDOG_USEC=1 s: the daemon must ping every 0.5 s (half of it, as sd_watchdog_enabled(3) advises),
    # and never leave a whole second without a ping (the manager would restart it).
    d = DaemonProc(str(tmp_path), test_root, extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    got = []

    def drain(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.append((time.monotonic(), srv.recv(4096).decode()))
            except socket.timeout:
                pass

    try:
        d.start()
        drain(3.0)
        ready = [t for t, m in got if m.startswith("READY=1")]
        pings = [t for t, m in got if m == "WATCHDOG=1"]
        assert ready and "STATUS=serving" in next(m for _, m in got if m.startswith("READY=1"))
        assert 4 <= len(pings) <= 7, got
        gaps = [round(b - a, 3) for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 1.0, gaps          # never a gap the manager would call a hang
        got.clear()
        d.proc.send_signal(signal.SIGHUP)
        drain(0.6)
        msgs = [m for _, m in got]
        assert "RELOADING=1" in msgs and msgs.index("RELOADING=1") < msgs.index("READY=1"), msgs
        got.clear()
        d.proc.terminate()
        d.proc.wait(10)
        drain(0.3)
        assert "STOPPING=1" in [m for _, m in got]
    finally:
        d.cleanup()
        srv.close()
