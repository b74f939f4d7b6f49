"""Policies: YAML -> a validated, frozen Policy (loader; schema, with each resource's limit
block in resources and the host-wide sections in sections) and pure evaluation (match)."""

from .loader import Problem, check_file, load_policy, load_policy_text, policy_search_path, resolve_policy
from .match import ToolDecision, ToolLimits, classify_tool, command_programs, is_housekeeping
from .schema import AgentClass, Match, MemoryLimits, Policy, ToolClass, ToolRule

__all__ = [
    "AgentClass", "Match", "MemoryLimits", "Policy", "Problem", "ToolClass", "ToolDecision",
    "ToolLimits", "ToolRule", "check_file", "classify_tool", "command_programs", "is_housekeeping",
    "load_policy", "load_policy_text", "policy_search_path", "resolve_policy",
]
