"""
Prometheus metrics, through C{prometheus_client}.

The request path only bumps plain counters (L{lbproxy.ops.stats}); a collector
reads them when C{/metrics} is scraped, into a registry of the service's own
(no global registry, no per-request calls into the client library).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lbproxy.upstream.pool import WEIGHT_SCALE

if TYPE_CHECKING:
    from lbproxy.service import ProxyService

STATES = ("UP", "DOWN", "DRAINING", "MAINT")


class ProxyCollector:
    """Reads the proxy's counters into metric families at scrape time."""

    def __init__(self, proxy: ProxyService) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        requests = CounterMetricFamily(
            "lbproxy_requests",
            "Requests answered, by pool, server (empty when none was reached), "
            "method and status class.",
            labels=["pool", "server", "method", "status_class"],
        )
        in_flight = GaugeMetricFamily(
            "lbproxy_in_flight_requests",
            "Requests sent to the server and not yet finished.",
            labels=["pool", "server"],
        )
        duration = HistogramMetricFamily(
            "lbproxy_request_duration_seconds",
            "Time from a request's first byte to the end of its response.",
            labels=["pool", "server"],
        )
        connect_failures = CounterMetricFamily(
            "lbproxy_backend_connect_failures",
            "Attempts that could not connect to the server (refused, timeout, TLS).",
            labels=["pool", "server"],
        )
        failures = CounterMetricFamily(
            "lbproxy_backend_failures",
            "Failed attempts counted by passive health checks.",
            labels=["pool", "server"],
        )
        retries = CounterMetricFamily(
            "lbproxy_retries", "Attempts made again after a failure.", labels=["pool"]
        )
        up = GaugeMetricFamily(
            "lbproxy_server_up",
            "1 when the server is UP (health checks pass, not taken out), else 0.",
            labels=["pool", "server"],
        )
        state = GaugeMetricFamily(
            "lbproxy_server_state",
            "1 for the server's current state (UP, DOWN, DRAINING, MAINT), 0 for the others.",
            labels=["pool", "server", "state"],
        )
        weight = GaugeMetricFamily(
            "lbproxy_server_weight",
            "The server's effective weight (lower during a slow start).",
            labels=["pool", "server"],
        )
        queue = GaugeMetricFamily(
            "lbproxy_queue_length",
            "Requests waiting for a server below its max_connections.",
            labels=["pool"],
        )
        for pool in proxy.pools.values():
            name = pool.name
            for (method, status), n in sorted(pool.stats.unrouted.items()):
                requests.add_metric([name, "", method, status], n)
            retries.add_metric([name], pool.stats.retries)
            queue.add_metric([name], pool.queue_length)
            for server in pool.servers:
                labels = [name, server.name]
                stats = server.stats
                for (method, status), n in sorted(stats.requests.items()):
                    requests.add_metric(labels + [method, status], n)
                in_flight.add_metric(labels, server.active)
                duration.add_metric(
                    labels, buckets=stats.histogram.buckets(), sum_value=stats.histogram.total
                )
                connect_failures.add_metric(labels, stats.connect_failures)
                failures.add_metric(labels, stats.failures)
                current = server.state
                up.add_metric(labels, 1 if server.up and not server.ejected else 0)
                for each in STATES:
                    state.add_metric(labels + [each], 1 if each == current else 0)
                weight.add_metric(labels, server.weight / WEIGHT_SCALE)
        connections = GaugeMetricFamily("lbproxy_client_connections", "Open client connections.")
        connections.add_metric([], proxy.site.open_connections)
        reloads = CounterMetricFamily(
            "lbproxy_config_reloads", "Configuration reloads, by result.", labels=["result"]
        )
        for result, n in sorted(proxy.reloads.items()):
            reloads.add_metric([result], n)
        yield from (
            requests,
            in_flight,
            duration,
            connect_failures,
            failures,
            retries,
            up,
            state,
            weight,
            queue,
            connections,
            reloads,
        )


def registry(proxy: ProxyService) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ProxyCollector(proxy))  # type: ignore[arg-type]
    return reg


def render(reg: CollectorRegistry) -> Tuple[bytes, str]:
    """The metrics text and its content type."""
    return generate_latest(reg), CONTENT_TYPE_LATEST
