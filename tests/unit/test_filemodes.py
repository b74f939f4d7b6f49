"""filemodes: the state directory is made private, an unsafe one refused with a reason."""

import os
import stat

import pytest

from agentd import filemodes
from agentd.errors import AgentdError


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_new_state_dir_is_0700(tmp_path):
    d = tmp_path / "a" / "state"
    filemodes.private_dir(str(d))
    assert mode(d) == 0o700


def test_open_state_dir_and_its_files_are_closed(tmp_path, caplog):
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o755)
    f = d / "history.sqlite"
    f.write_text("x")
    os.chmod(f, 0o644)
    filemodes.private_dir(str(d))
    assert mode(d) == 0o700 and mode(f) == 0o600
    assert "was mode 755" in caplog.text


def test_symlink_or_foreign_state_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(AgentdError, match="not a directory"):
        filemodes.private_dir(str(link))
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)
        with pytest.raises(AgentdError, match="belongs to uid 65534"):
            filemodes.private_dir(str(real))


def test_shared_dir_stays_reachable_under_the_daemons_umask(tmp_path):
    old = os.umask(filemodes.DAEMON_UMASK)
    try:
        filemodes.shared_dir(str(tmp_path / "run" / "agentd"))
        assert mode(tmp_path / "run") == 0o755
    finally:
        os.umask(old)
    assert mode(tmp_path / "run" / "agentd") == 0o755
