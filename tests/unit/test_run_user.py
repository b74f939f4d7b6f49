"""Which user `agentd run` gives the agent (agentd.cli.agent_user): pure over its inputs."""

import os
import pwd
import types

import pytest

from agentd.cli import agent_user
from agentd.errors import AgentdError

NOBODY = pwd.getpwnam("nobody")


def args(user=None):
    return types.SimpleNamespace(user=user)


def test_through_sudo_the_agent_runs_as_the_invoking_user():
    u = agent_user(args(), {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": str(NOBODY.pw_gid)}, euid=0)
    assert (u.uid, u.gid, u.name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")
    assert NOBODY.pw_gid in u.groups


def test_sudo_gid_is_taken_as_given():
    u = agent_user(args(), {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": "4242"}, euid=0)
    assert u.gid == 4242


@pytest.mark.parametrize("env,euid", [({}, 0), ({"SUDO_UID": "0"}, 0), ({"SUDO_UID": "65534"}, 1000),
                                      ({"SUDO_UID": "x"}, 0)])
def test_without_sudo_or_privilege_nothing_changes(env, euid):
    assert agent_user(args(), env, euid=euid) is None


def test_user_root_keeps_root_even_through_sudo():
    assert agent_user(args("root"), {"SUDO_UID": str(NOBODY.pw_uid)}, euid=0) is None


def test_user_by_name_or_number():
    assert agent_user(args("nobody"), {}, euid=0).uid == NOBODY.pw_uid
    assert agent_user(args(str(NOBODY.pw_uid)), {}, euid=0).name == "nobody"


def test_bad_user_requests_are_refused_with_a_reason():
    with pytest.raises(AgentdError, match="no such user"):
        agent_user(args("no-such-user-here"), {}, euid=0)
    with pytest.raises(AgentdError, match="only root"):
        agent_user(args("nobody"), {}, euid=os.getuid() + 12345 if os.getuid() else 1000)
