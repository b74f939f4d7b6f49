"""The kernel OOM killer's order agentd sets: agents last, then by agent priority, then class."""

from agentd import oom


def test_agents_are_below_every_tool_call():
    assert oom.main_adj(False) < min(oom.tool_adj(a, t) for a in (0, 1000) for t in (0, 1000))
    assert oom.main_adj(False) > -1000          # killable as the very last resort
    assert oom.main_adj(True) == 0


def test_the_agent_priority_dominates_the_call_class():
    high_batch = oom.tool_adj(800, 20)
    low_interactive = oom.tool_adj(100, 80)
    assert low_interactive > high_batch
    assert oom.tool_adj(100, 20) > oom.tool_adj(100, 80)      # within an agent: the class


def test_values_stay_in_the_kernel_range():
    for a in (-5, 0, 500, 1000, 5000):
        for t in (-5, 0, 1000, 5000):
            assert 0 <= oom.tool_adj(a, t) <= 1000
