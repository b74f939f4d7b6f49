"""Prometheus metrics: collectors read a snapshot of the daemon at scrape time."""

import logging

log = logging.getLogger("agentd.metrics")


class _Handle:
    def __init__(self, httpd, thread):
        self.httpd, self.thread = httpd, thread

    def shutdown(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def start_metrics(app, listen):
    from prometheus_client import CollectorRegistry, start_http_server
    from .collector import AgentdCollector
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentdCollector(app))
    try:
        httpd, thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    except OSError as err:
        log.warning("metrics endpoint %s unavailable (%s); continuing without /metrics", listen, err)
        return None
    log.info("metrics on http://%s/metrics", listen)
    return _Handle(httpd, thread)
