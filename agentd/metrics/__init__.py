"""Prometheus metrics: collectors read a snapshot of the daemon at scrape time.

`start_metrics(app, listen)` subscribes an EventTally to the event log (counters and
histograms of finished things) and serves /metrics from one registry holding the
AgentdCollector. The full list of metrics: CATALOG.md (generated from catalog.py).
"""

import logging

log = logging.getLogger("agentd.metrics")


class _Handle:
    def __init__(self, httpd, thread, tally):
        self.httpd, self.thread, self.tally = httpd, thread, tally

    def shutdown(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_listen(listen):
    """"host:port" (or ":port", "[::1]:port") -> (host, port); host defaults to loopback."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        from ..errors import PolicyError
        raise PolicyError(f"metrics listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def build_registry(app):
    from prometheus_client import CollectorRegistry
    from .collector import AgentdCollector
    from .tally import EventTally
    tally = EventTally()
    events = getattr(app, "events", None)
    if events is not None:
        events.subscribe(tally.on_event)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentdCollector(app, tally))
    return registry, tally


def start_metrics(app, listen):
    from prometheus_client import start_http_server
    host, port = parse_listen(listen)
    registry, tally = build_registry(app)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        log.warning("metrics endpoint %s unavailable (%s); continuing without /metrics", listen, err)
        return None
    log.info("metrics on http://%s/metrics", listen)
    return _Handle(httpd, thread, tally)
