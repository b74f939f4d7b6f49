"""Network egress limits per agent and tool call (policy `network`)."""

from ..errors import FeatureMissing


def build(app):
    """The egress stage, or None when the policy names no device (nothing is touched)."""
    if not app.policy.network.devices:
        return None
    if getattr(app, "dry_run", False):
        # A qdisc on a device and a program on agentd's root change how the host sends
        # everything it sends: a dry run does neither.
        raise FeatureMissing(f"dry run: no qdisc set on {', '.join(app.policy.network.devices)} and no "
                             "egress program loaded")
    from .stage import EgressStage
    return EgressStage(app)
