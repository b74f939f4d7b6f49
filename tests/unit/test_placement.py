"""agentd.placement: where the daemon and its agents go, from where systemd started it."""

import pytest

from agentd.placement import PlacementError, decide


def test_delegate_subgroup_makes_the_unit_the_root():
    # systemd >= 254 with DelegateSubgroup=daemon started us in the unit's `daemon` leaf.
    p = decide("/system.slice/agentd.service/daemon", under_systemd=True)
    assert (p.root, p.self_cgroup, p.move, p.protect) == (
        "system.slice/agentd.service", "system.slice/agentd.service/daemon", False, False)
    assert p.layout == "delegate-subgroup"


def test_old_systemd_keeps_the_daemon_in_the_unit_and_agents_at_top_level():
    # systemd 252 starts the main process in the unit's cgroup itself: enabling controllers
    # there would make the next start fail (219/CGROUP), so the agents go elsewhere and
    # the daemon is never moved out of the unit systemd tracks it by.
    p = decide("/system.slice/agentd.service", under_systemd=True)
    assert (p.root, p.self_cgroup, p.move, p.protect) == (
        "agentd", "system.slice/agentd.service", False, False)
    assert p.layout == "unit+top-level"


def test_a_configured_root_inside_the_unit_is_refused_with_the_fix():
    with pytest.raises(PlacementError, match="DelegateSubgroup=daemon"):
        decide("/system.slice/agentd.service", under_systemd=True,
               configured_root="system.slice/agentd.service")
    with pytest.raises(PlacementError, match="219"):
        decide("/system.slice/agentd.service", under_systemd=True,
               configured_root="/system.slice/agentd.service/agents/")


def test_a_configured_root_elsewhere_wins_under_systemd():
    p = decide("/system.slice/agentd.service", under_systemd=True, configured_root="/agents.host/")
    assert (p.root, p.self_cgroup, p.move) == ("agents.host", "system.slice/agentd.service", False)


def test_by_hand_the_daemon_moves_into_its_own_leaf():
    p = decide("/user.slice/user-0.slice/session-3.scope", under_systemd=False)
    assert (p.root, p.self_cgroup, p.move, p.protect) == ("agentd", "agentd/daemon", True, True)
    # Already there (a restart by hand): no move.
    assert not decide("/agentd/daemon", under_systemd=False).move
    p = decide("", under_systemd=False, configured_root="test-root")
    assert (p.root, p.self_cgroup, p.move) == ("test-root", "test-root/daemon", True)
