"""
The read model: a snapshot of pools and servers taken through the source
protocols, as frozen values; /status and /metrics rendered from a snapshot
alone.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping

import attr
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.trial import unittest

from lbproxy.config import parse
from lbproxy.ops import admin, metrics
from lbproxy.ops.snapshot import (
    PoolSnapshot,
    ProxySnapshot,
    ServerSnapshot,
    server_snapshot,
    snapshot,
)
from lbproxy.service import ProxyService
from lbproxy.upstream.pool import Pool, ServerState

CONFIG = """\
[proxy]
listen = tcp:0:interface=127.0.0.1
pool = web
[pool:web]
algorithm = weighted_round_robin
servers = http://127.0.0.1:8001 name=a weight=3 max_connections=5
          http://127.0.0.1:8002 name=b
"""


@attr.s(auto_attribs=True)
class Source:
    """A L{ProxySource} of plain values, as a supervisor could build one."""

    pools: Mapping[str, Pool]
    clock: task.Clock
    used_pools: Iterable[str] = ("web",)
    started_at: float = 0.0
    config_path: str = "t.ini"
    client_connections: int = 7
    reloads: Mapping[str, int] = attr.ib(factory=lambda: {"ok": 2, "refused": 1})

    def seconds(self) -> float:
        return self.clock.seconds()


def make_pools(clock: task.Clock) -> Dict[str, Pool]:
    config = parse(CONFIG, "t.ini")
    return {
        name: Pool(pool, [ServerState(s) for s in pool.servers], clock)
        for name, pool in config.pools.items()
    }


def a_server(**changes: object) -> ServerSnapshot:
    values: Dict[str, object] = dict(
        name="a",
        url="http://127.0.0.1:8001",
        state="UP",
        up=True,
        backup=False,
        weight=2,
        effective_weight=1.5,
        in_flight=1,
        max_connections=None,
        requests=((("GET", "2xx"), 4),),
        served=4,
        failures=1,
        connect_failures=0,
        duration_buckets=(("0.1", 4), ("+Inf", 4)),
        duration_sum=0.2,
        last_health_check="status 200",
        requests_last_minute=4,
        p50=0.05,
        p99=0.1,
    )
    values.update(changes)
    return ServerSnapshot(**values)  # type: ignore[arg-type]


class SnapshotTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.pools = make_pools(self.clock)
        self.source = Source(self.pools, self.clock, started_at=990.0)

    def test_servers_and_pools_as_they_are(self) -> None:
        web = self.pools["web"]
        a, b = web.by_name["a"], web.by_name["b"]
        now = self.clock.seconds()
        for _ in range(3):
            a.stats.record("GET", "2xx", 0.01, now)
        a.stats.record("POST", "5xx", 0.5, now)
        web.stats.record_unrouted("GET", "5xx")
        web.stats.retries = 2
        web.dispatch(b)
        web.drain(a)
        web.record_check(b, True, "status 200")
        taken = snapshot(self.source)
        self.assertEqual((taken.now, taken.uptime), (1000.0, 10.0))
        self.assertEqual(taken.reloads, (("ok", 2), ("refused", 1)))
        self.assertEqual(taken.client_connections, 7)
        self.assertEqual([(p.name, p.takes_requests) for p in taken.pools], [("web", True)])
        self.source.used_pools = ()
        self.assertFalse(snapshot(self.source).pools[0].takes_requests)
        pool = taken.pools[0]
        self.assertEqual(
            (pool.algorithm, pool.retries, pool.queue_length), ("weighted_round_robin", 2, 0)
        )
        self.assertEqual(pool.unrouted, ((("GET", "5xx"), 1),))
        sa, sb = pool.servers
        self.assertEqual(
            (sa.state, sa.up, sa.weight, sa.effective_weight, sa.max_connections),
            ("DRAINING", True, 3, 3.0, 5),
        )
        self.assertEqual(sa.requests, ((("GET", "2xx"), 3), (("POST", "5xx"), 1)))
        self.assertEqual((sa.served, sa.requests_last_minute), (4, 4))
        self.assertEqual(sa.duration_buckets[-1], ("+Inf", 4))
        self.assertAlmostEqual(sa.duration_sum, 0.53)
        assert sa.p50 is not None and sa.p99 is not None
        self.assertLess(sa.p50, sa.p99)
        self.assertIsNone(sa.last_health_check)
        self.assertEqual((sb.in_flight, sb.last_health_check, sb.p50), (1, "status 200", None))

    def test_a_snapshot_does_not_change_with_the_proxy(self) -> None:
        web = self.pools["web"]
        a = web.by_name["a"]
        taken = snapshot(self.source)
        web.dispatch(a)
        a.stats.record("GET", "2xx", 0.01, self.clock.seconds())
        web.maintain(a)
        server = taken.pools[0].servers[0]
        self.assertEqual((server.in_flight, server.served, server.state), (0, 0, "UP"))
        self.assertEqual(server_snapshot(a, self.clock.seconds()).state, "MAINT")
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            server.state = "DOWN"  # type: ignore[misc]

    def test_an_ejected_server_is_not_up(self) -> None:
        web = self.pools["web"]
        a = web.by_name["a"]
        for _ in range(web.config.max_fails):
            web.record_failure(a)
        self.assertTrue(a.ejected)
        taken = server_snapshot(a, self.clock.seconds())
        self.assertEqual((taken.up, taken.state), (False, "DOWN"))

    def test_the_service_is_a_source(self) -> None:
        service = ProxyService(parse(CONFIG, "t.ini"), reactor=self.clock)
        for pool in service.pools.values():
            self.addCleanup(pool.stop)
        taken = snapshot(service)
        self.assertEqual(taken.config_path, "t.ini")
        self.assertEqual(taken.reloads, (("ok", 0), ("refused", 0)))
        self.assertEqual([p.takes_requests for p in taken.pools], [True])
        self.assertEqual(taken.client_connections, 0)


def a_snapshot(servers: List[ServerSnapshot]) -> ProxySnapshot:
    pool = PoolSnapshot(
        name="web",
        algorithm="round_robin",
        takes_requests=True,
        queue_length=3,
        retries=5,
        unrouted=((("GET", "5xx"), 2),),
        servers=tuple(servers),
    )
    return ProxySnapshot(
        now=100.0,
        started_at=40.0,
        config_path="t.ini",
        client_connections=9,
        reloads=(("ok", 1), ("refused", 0)),
        pools=(pool,),
    )


class RenderingTests(unittest.TestCase):
    """The renderers read a snapshot and nothing else."""

    def test_status_document(self) -> None:
        document = admin.status(a_snapshot([a_server()]))
        self.assertEqual(
            list(document),
            ["version", "uptime_seconds", "config", "client_connections", "reloads", "pools"],
        )
        self.assertEqual(document["uptime_seconds"], 60.0)
        self.assertEqual(document["reloads"], {"ok": 1, "refused": 0})
        (pool,) = document["pools"]
        self.assertEqual(
            list(pool),
            ["name", "algorithm", "takes_requests", "queue_length", "retries_made", "servers"],
        )
        (server,) = pool["servers"]
        self.assertEqual(
            server,
            {
                "name": "a",
                "url": "http://127.0.0.1:8001",
                "state": "UP",
                "backup": False,
                "weight": 2,
                "effective_weight": 1.5,
                "in_flight": 1,
                "max_connections": None,
                "requests_served": 4,
                "failed_attempts": 1,
                "failed_connects": 0,
                "last_health_check": "status 200",
                "requests_last_minute": 4,
                "latency_ms": {"p50": 50.0, "p99": 100.0},
            },
        )

    def test_metrics(self) -> None:
        taken = a_snapshot([a_server(), a_server(name="b", state="DOWN", up=False)])
        text = generate_latest(metrics.registry(lambda: taken)).decode("utf-8")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        self.assertEqual(value("lbproxy_server_up", pool="web", server="a"), 1)
        self.assertEqual(value("lbproxy_server_up", pool="web", server="b"), 0)
        self.assertEqual(value("lbproxy_server_state", pool="web", server="b", state="DOWN"), 1)
        self.assertEqual(value("lbproxy_server_state", pool="web", server="b", state="UP"), 0)
        self.assertEqual(value("lbproxy_server_weight", pool="web", server="a"), 1.5)
        self.assertEqual(value("lbproxy_in_flight_requests", pool="web", server="a"), 1)
        self.assertEqual(
            value(
                "lbproxy_requests_total", pool="web", server="", method="GET", status_class="5xx"
            ),
            2,
        )
        self.assertEqual(
            value(
                "lbproxy_requests_total", pool="web", server="a", method="GET", status_class="2xx"
            ),
            4,
        )
        self.assertEqual(
            value("lbproxy_request_duration_seconds_bucket", pool="web", server="a", le="+Inf"), 4
        )
        self.assertEqual(value("lbproxy_request_duration_seconds_sum", pool="web", server="a"), 0.2)
        self.assertEqual(value("lbproxy_retries_total", pool="web"), 5)
        self.assertEqual(value("lbproxy_queue_length", pool="web"), 3)
        self.assertEqual(value("lbproxy_client_connections"), 9)
        self.assertEqual(value("lbproxy_config_reloads_total", result="ok"), 1)
