"""Fleet files: the Grafana dashboard uses only catalog metrics; the DaemonSet and ConfigMap are complete."""

import json
import re

import pytest
import yaml

from agentd.deploy import CONFIGMAP, DAEMONSET, DASHBOARD
from agentd.metrics.catalog import BY_NAME, HISTOGRAM
from agentd.policy.loader import load_policy_text


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        stem = name[: -len(suffix)]
        if name.endswith(suffix) and stem in BY_NAME and BY_NAME[stem].type == HISTOGRAM:
            return stem
    return name


@pytest.fixture(scope="module")
def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def exprs(dash):
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_metrics_exist_and_cover_the_catalog(dashboard):
    used = {base_metric(n) for e in exprs(dashboard) for n in re.findall(r"\bagentd_[a-z0-9_]+", e)}
    used |= {base_metric(n) for v in dashboard["templating"]["list"]
             for n in re.findall(r"\bagentd_[a-z0-9_]+", v.get("definition", ""))}
    unknown = used - set(BY_NAME)
    assert not unknown, f"dashboard uses metrics agentd does not export: {sorted(unknown)}"
    assert set(BY_NAME) - used == set(), f"metrics without a panel: {sorted(set(BY_NAME) - used)}"


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    defined = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval"}
    for e in exprs(dashboard):
        assert set(re.findall(r"\$(\w+)", e)) <= defined, e
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    # Panels fit the 24-column grid and do not overlap.
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"


@pytest.fixture(scope="module")
def manifests():
    with open(DAEMONSET) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(CONFIGMAP) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
    return {d["kind"]: d for d in docs}


def test_daemonset_required_fields(manifests):
    ds, cm, ns = manifests["DaemonSet"], manifests["ConfigMap"], manifests["Namespace"]
    assert ds["apiVersion"] == "apps/v1"
    assert ds["metadata"]["namespace"] == cm["metadata"]["namespace"] == ns["metadata"]["name"]
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostPID"] is True
    [c] = spec["containers"]
    assert c["securityContext"]["privileged"] is True and c["image"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert all(m["name"] in vols for m in mounts.values())
    for path in ("/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/btf", "/run/agentd"):
        assert vols[mounts[path]["name"]]["hostPath"]["path"] == path, path
    assert mounts["/sys/kernel/btf"].get("readOnly") is True
    pol = mounts["/etc/agentd/policies"]
    assert vols[pol["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    # The policy the command names is in the ConfigMap, and its metrics port is the one exposed.
    policy_file = c["command"][c["command"].index("--policy") + 1]
    assert policy_file.startswith("/etc/agentd/policies/")
    key = policy_file.rsplit("/", 1)[1]
    assert key in cm["data"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    policy = load_policy_text(cm["data"][key], key, host_memory_bytes=64 * 2**30)
    assert policy.daemon.metrics_listen.endswith(f":{port}")
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_configmap_policies_load(manifests):
    cm = manifests["ConfigMap"]
    assert cm["data"]
    for name, text in cm["data"].items():
        load_policy_text(text, name, host_memory_bytes=64 * 2**30)
