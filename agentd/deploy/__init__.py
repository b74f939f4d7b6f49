"""Fleet files shipped as package data: Grafana dashboard, Kubernetes DaemonSet, policy ConfigMap.

See README.md here. `files()` lists them for tools and tests.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "grafana-dashboard.json")
DAEMONSET = os.path.join(HERE, "daemonset.yaml")
CONFIGMAP = os.path.join(HERE, "configmap-policies.yaml")


def files():
    return [DASHBOARD, DAEMONSET, CONFIGMAP]
