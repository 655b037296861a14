"""
Prometheus metrics, through C{prometheus_client}.

The request path only bumps plain counters (L{lbproxy.ops.stats}); a collector
renders a snapshot of them (L{lbproxy.ops.snapshot}) when C{/metrics} is
scraped, into a registry of the service's own (no global registry, no
per-request calls into the client library).
"""

from __future__ import annotations

from typing import Callable, Iterator, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lbproxy.ops.snapshot import ProxySnapshot

STATES = ("UP", "DOWN", "DRAINING", "MAINT")


class ProxyCollector:
    """
    Renders a snapshot of the proxy into metric families at scrape time.

    @param take: Takes a snapshot of the proxy as it is now.
    """

    def __init__(self, take: Callable[[], ProxySnapshot]) -> None:
        self.take = take

    def collect(self) -> Iterator[Metric]:
        taken = self.take()
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
        for pool in taken.pools:
            name = pool.name
            for (method, status), n in pool.unrouted:
                requests.add_metric([name, "", method, status], n)
            retries.add_metric([name], pool.retries)
            queue.add_metric([name], pool.queue_length)
            for server in pool.servers:
                labels = [name, server.name]
                for (method, status), n in server.requests:
                    requests.add_metric(labels + [method, status], n)
                in_flight.add_metric(labels, server.in_flight)
                duration.add_metric(
                    labels, buckets=list(server.duration_buckets), sum_value=server.duration_sum
                )
                connect_failures.add_metric(labels, server.connect_failures)
                failures.add_metric(labels, server.failures)
                up.add_metric(labels, 1 if server.up else 0)
                for each in STATES:
                    state.add_metric(labels + [each], 1 if each == server.state else 0)
                weight.add_metric(labels, server.effective_weight)
        connections = GaugeMetricFamily("lbproxy_client_connections", "Open client connections.")
        connections.add_metric([], taken.client_connections)
        reloads = CounterMetricFamily(
            "lbproxy_config_reloads", "Configuration reloads, by result.", labels=["result"]
        )
        for result, n in sorted(taken.reloads):
            reloads.add_metric([result], n)
        # Each worker process's own figures (none in a single process).
        worker_requests = CounterMetricFamily(
            "lbproxy_worker_requests",
            "Requests a worker process answered through a server.",
            labels=["worker", "pid"],
        )
        worker_connections = GaugeMetricFamily(
            "lbproxy_worker_client_connections",
            "Open client connections of a worker process.",
            labels=["worker", "pid"],
        )
        for worker in taken.workers:
            labels = [str(worker.number), str(worker.pid)]
            worker_requests.add_metric(labels, worker.requests)
            worker_connections.add_metric(labels, worker.client_connections)
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
        if taken.workers:
            yield from (worker_requests, worker_connections)


def registry(take: Callable[[], ProxySnapshot]) -> CollectorRegistry:
    """A registry of its own that scrapes the snapshots C{take} takes."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ProxyCollector(take))  # type: ignore[arg-type]
    return reg


def render(reg: CollectorRegistry) -> Tuple[bytes, str]:
    """The metrics text and its content type."""
    return generate_latest(reg), CONTENT_TYPE_LATEST
