"""A real Prometheus server scrapes a real daemon on loopback; its HTTP API must see agentd's series.

Needs Debian's `prometheus` package (.ci/setup.sh installs it). Everything runs on
random free loopback ports with storage in the test's tmp dir; both servers stop at the end.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from agentd.deploy import DASHBOARD
from agentd.metrics.catalog import BY_NAME
from tests.host.ops_support import WAIT, Gate
from tests.helpers import DaemonProc, agentd_cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary():
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if not path:
        pytest.fail("the Prometheus server binary is missing: install Debian's `prometheus` package "
                    "(apt-get install -y prometheus; .ci/setup.sh does)")
    return path


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    def __init__(self, tmp, target):
        self.port = free_port()
        self.dir = os.path.join(tmp, "prometheus")
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: agentd\n    static_configs:\n"
                    f"      - targets: ['{target}']\n")
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={self.config}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.logtext()}"
            try:
                get(self.url + "/-/ready")
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready: {self.logtext()}")

    def query(self, q):
        body = json.loads(get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": q})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, q, pred, timeout=30):
        deadline = time.monotonic() + timeout
        res = None
        while time.monotonic() < deadline:
            res = self.query(q)
            if pred(res):
                return res
            time.sleep(0.5)
        raise AssertionError(f"{q}: {res}; prometheus log: {self.logtext()[-2000:]}")

    def logtext(self):
        with open(os.path.join(self.dir, "log")) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


AGENT = r'''
front="$1"; shift; gate="$1"; shift
"$front" "$@" tool -- true
"$front" "$@" tool -- sh -c 'exit 3'
"$front" "$@" tool -- sh -c 'head -c 20000000 /dev/zero | tail -c 1 >/dev/null'
''' + WAIT + r'''
'''


@pytest.fixture
def metrics_daemon(tmp_path, test_root):
    d = DaemonProc(str(tmp_path), test_root, metrics=f"127.0.0.1:{free_port()}")
    d.start()
    yield d
    d.cleanup()


def test_prometheus_scrapes_agentd_series(metrics_daemon, tmp_path, cgfs):
    d = metrics_daemon
    prom = Prometheus(str(tmp_path), d.metrics)
    gate = Gate(tmp_path / "gate")
    front = agentd_cmd()
    agent = subprocess.Popen(agentd_cmd() + ["run", "--name", "scraped", "--", "bash", "-c", AGENT, "agent",
                                             front[0], gate.path, *front[1:]],
                             env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        check(prom, d, agent)
    except AssertionError as err:
        raise AssertionError(f"{err}\nagent: {agent.poll()} {agent.stderr.read() if agent.poll() is not None else ''}"
                             f"\ndaemon log: {d.log()[-3000:]}") from None
    finally:
        gate.open()
        try:
            agent.wait(30)
        finally:
            prom.stop()
    assert agent.returncode == 0, agent.stderr.read()
    assert prom.proc.returncode is not None


def check(prom, d, agent):
    """What Prometheus must see while the agent waits at its gate."""
    prom.wait_ready()
    prom.wait_for('up{job="agentd"}', lambda r: r and r[0]["value"][1] == "1")
    fin = prom.wait_for("agentd_tool_calls_finished_total",
                        lambda r: sum(float(s["value"][1]) for s in r) >= 3)
    by_outcome = {}
    for s in fin:             # the calls may fall in different tool classes: sum over them
        by_outcome[s["metric"]["outcome"]] = by_outcome.get(s["metric"]["outcome"], 0) + float(s["value"][1])
    assert by_outcome.get("ok") == 2 and by_outcome.get("failed") == 1, fin
    assert all(set(s["metric"]) >= {"tool_class", "outcome", "job", "instance"} for s in fin)
    [running] = prom.wait_for("agentd_agents_running", lambda r: r and r[0]["value"][1] == "1")
    mem = prom.wait_for('agentd_agent_memory_bytes{agent="scraped"}', lambda r: len(r) == 1)
    assert mem[0]["metric"]["agent_class"] and float(mem[0]["value"][1]) > 0
    count = prom.wait_for("sum(agentd_tool_call_duration_seconds_count)",
                          lambda r: r and float(r[0]["value"][1]) >= 3)
    assert float(count[0]["value"][1]) == 3
    prom.wait_for('agentd_agent_pressure_memory_waiting_seconds_total{agent="scraped"}', lambda r: len(r) == 1)
    names = json.loads(get(prom.url + "/api/v1/label/__name__/values"))["data"]
    ours = {n for n in names if n.startswith("agentd_")}
    unknown = {n for n in ours if n not in BY_NAME
               and not (n.rpartition("_")[0] in BY_NAME and n.rpartition("_")[2] in ("bucket", "sum", "count"))}
    assert not unknown, f"series not in the catalog: {unknown}"
    # Every query of the Grafana dashboard parses and runs on a real Prometheus.
    with open(DASHBOARD) as f:
        dash = json.load(f)
    subst = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$agent": ".*"}
    answered = 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            q = t["expr"]
            for k, v in subst.items():
                q = q.replace(k, v)
            answered += bool(prom.query(q))     # query() asserts status "success"
    assert answered >= 5, "the dashboard's queries found no agentd data"
