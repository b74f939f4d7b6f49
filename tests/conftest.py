import os

# Tests always read the repository's shipped policies, never copies an earlier
# `agentd install` left in /etc/agentd/policies.
os.environ["AGENTD_POLICY_DIR"] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "policies")
