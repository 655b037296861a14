"""
lbproxy.ops.metrics: the Prometheus text, read from the counters of a proxy
that served requests in memory (lbproxy.testing).
"""

from __future__ import annotations

from typing import Dict

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from lbproxy.ops.metrics import registry, render
from lbproxy.ops.snapshot import snapshot
from lbproxy.testing import ProxyHarness

A, B = "http://127.0.0.1:8001", "http://127.0.0.1:8002"
CONFIG = f"""
[proxy]
listen = tcp:8080
pool = web

[pool:web]
servers =
    {A}
    {B}
"""


def samples(harness: ProxyHarness) -> Dict[str, float]:
    """Every sample as 'name{label=value,...}' -> value."""
    text, content_type = render(registry(lambda: snapshot(harness.service)))
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


class MetricsTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ProxyHarness(CONFIG)
        self.addCleanup(self.harness.stop)

    def test_requests_are_counted_by_server_method_and_status_class(self) -> None:
        for _ in range(3):
            self.harness.request("GET", "/")
        self.harness.backend(B).fail(503)
        self.harness.request("POST", "/", body=b"x")
        found = samples(self.harness)
        key = "lbproxy_requests_total{{method=GET,pool=web,server={},status_class=2xx}}"
        self.assertEqual(found[key.format("127.0.0.1:8001")], 2.0)
        self.assertEqual(found[key.format("127.0.0.1:8002")], 1.0)
        failed = (
            "lbproxy_requests_total{method=POST,pool=web,server=127.0.0.1:8002,status_class=5xx}"
        )
        self.assertEqual(found[failed], 1.0)

    def test_servers_are_up_and_nothing_is_in_flight_after_the_requests(self) -> None:
        self.harness.request()
        found = samples(self.harness)
        for server in ("127.0.0.1:8001", "127.0.0.1:8002"):
            self.assertEqual(found[f"lbproxy_server_up{{pool=web,server={server}}}"], 1.0)
            self.assertEqual(found[f"lbproxy_in_flight_requests{{pool=web,server={server}}}"], 0.0)

    def test_connect_failures_and_retries(self) -> None:
        self.harness.backend(A).refuse()
        self.harness.request()
        self.harness.request()
        found = samples(self.harness)
        self.assertGreaterEqual(
            found["lbproxy_backend_connect_failures_total{pool=web,server=127.0.0.1:8001}"], 1.0
        )
        self.assertGreaterEqual(found["lbproxy_retries_total{pool=web}"], 1.0)

    def test_durations_fill_the_histogram(self) -> None:
        self.harness.request()
        found = samples(self.harness)
        counts = [
            v for k, v in found.items() if k.startswith("lbproxy_request_duration_seconds_count")
        ]
        self.assertEqual(sum(counts), 1.0)
