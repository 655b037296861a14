"""
The accounting of finished requests reads the request record only: counts
against its server, or its pool when no server took it, and one access log
entry.
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from lbproxy.config import parse
from lbproxy.ops import accesslog
from lbproxy.ops.accounting import Accounting
from lbproxy.record import RequestRecord
from lbproxy.upstream.pool import Pool, ServerState
from tests.support import proxy_config


class FakeLog:
    def __init__(self) -> None:
        self.entries: List[accesslog.Entry] = []

    def write_record(self, record: RequestRecord, now: float) -> None:
        self.entries.append(accesslog.entry(record, now))


class AccountingTests(unittest.TestCase):
    def setUp(self) -> None:
        config = parse(proxy_config(["http://127.0.0.1:1 name=a"])).active_pool()
        self.pool = Pool(config, [ServerState(s, s.name) for s in config.servers])
        self.clock = Clock()
        self.clock.advance(1000)
        self.accounting = Accounting(self.clock)
        self.log = FakeLog()
        self.accounting.access_log = self.log  # type: ignore[assignment]

    def record(self, **kwargs: object) -> RequestRecord:
        values = dict(
            method=b"GET",
            target=b"/a?b",
            protocol=b"HTTP/1.1",
            client="127.0.0.2",
            scheme=b"http",
            headers=Headers({b"Referer": [b"r"], b"User-Agent": [b"ua"]}),
            started=0.0,
            request_id=b"id",
            pool=self.pool,
            status=200,
            sent=123,
            duration=0.5,
        )
        values.update(kwargs)
        return RequestRecord(**values)  # type: ignore[arg-type]

    def test_a_served_request_counts_against_its_server(self) -> None:
        server = self.pool.servers[0]
        self.accounting.request_done(self.record(server=server, attempts=2))
        self.assertEqual(server.stats.requests, {("GET", "2xx"): 1})
        self.assertEqual(self.pool.stats.unrouted, {})
        [entry] = self.log.entries
        self.assertEqual(
            (entry.time, entry.client, entry.target, entry.status, entry.sent, entry.server),
            (1000.0, "127.0.0.2", b"/a?b", 200, 123, "a"),
        )
        self.assertEqual(
            (entry.attempts, entry.request_id, entry.referer, entry.user_agent),
            (2, b"id", b"r", b"ua"),
        )

    def test_a_request_no_server_took_counts_against_its_pool(self) -> None:
        self.accounting.request_done(self.record(status=503))
        self.assertEqual(self.pool.servers[0].stats.served, 0)
        self.assertEqual(self.pool.stats.unrouted, {("GET", "5xx"): 1})
        self.assertIsNone(self.log.entries[0].server)

    def test_a_tunnel_counts_its_time_to_the_101_and_logs_its_bytes(self) -> None:
        server = self.pool.servers[0]
        tunnel = self.record(
            server=server, status=101, duration=30.0, switched_after=0.004, received=7
        )
        self.accounting.request_done(tunnel)
        self.accounting.request_done(self.record(server=server, duration=0.004))
        # Both count as 4 ms: the tunnel's 30 s open are not its latency.
        [p100] = server.stats.recent.percentiles(self.clock.seconds(), 1.0)
        assert p100 is not None
        self.assertLess(p100, 1.0)
        self.assertEqual([e.received for e in self.log.entries], [7, None])
        self.assertEqual(self.log.entries[0].duration, 30.0)

    def test_no_access_log_writes_nothing(self) -> None:
        self.accounting.access_log = None
        self.accounting.request_done(self.record())
        self.assertEqual(self.log.entries, [])
