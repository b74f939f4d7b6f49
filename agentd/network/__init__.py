"""Network egress limits per agent and tool call (policy `network`)."""

from ..errors import FeatureMissing


def build(app):
    """The egress stage, or None when the policy names no device (nothing is touched)."""
    if not app.policy.network.devices:
        return None
    from .stage import EgressStage
    try:
        return EgressStage(app)
    except FeatureMissing:
        raise
