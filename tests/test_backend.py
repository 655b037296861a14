"""
lbproxy.upstream.backend: routes built once per server, requests the agent
refuses to send, and connection reuse (in memory, through lbproxy.testing).
Twisted's private parts it uses are checked in tests/test_backend_framing.py.
"""

from __future__ import annotations

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers

from lbproxy.config import parse_server
from lbproxy.testing import ProxyHarness
from lbproxy.upstream.backend import (
    BackendAgent,
    BackendConnectionPool,
    UnsendableRequest,
    make_route,
    unsendable,
)


def route(url: str):  # type: ignore[no-untyped-def]
    return make_route(MemoryReactorClock(), parse_server(url), BrowserLikePolicyForHTTPS(), 3.0)


class RouteTests(unittest.SynchronousTestCase):
    def test_ipv4_server(self) -> None:
        built = route("http://10.0.0.5:8080")
        self.assertIsInstance(built.endpoint, TCP4ClientEndpoint)
        self.assertEqual(built.key, (b"http", b"10.0.0.5", 8080))
        self.assertEqual(built.uri.netloc, b"10.0.0.5:8080")

    def test_ipv6_server_is_bracketed_in_the_netloc(self) -> None:
        built = route("http://[::1]:8080")
        self.assertIsInstance(built.endpoint, TCP6ClientEndpoint)
        self.assertEqual(built.uri.netloc, b"[::1]:8080")
        self.assertEqual(built.key, (b"http", b"::1", 8080))

    def test_host_name_server_resolves_when_connecting(self) -> None:
        self.assertIsInstance(route("http://app.internal:80").endpoint, HostnameEndpoint)

    def test_https_server_is_wrapped_in_tls(self) -> None:
        built = route("https://10.0.0.5:8443")
        self.assertNotIsInstance(built.endpoint, TCP4ClientEndpoint)
        self.assertEqual(built.key[0], b"https")


class UnsendableTests(unittest.SynchronousTestCase):
    def test_table(self) -> None:
        one_host = Headers({b"host": [b"a"]})
        cases = [
            (b"GET", b"/a?b", one_host, None),
            (b"G T", b"/", one_host, "invalid method"),
            (b"GET", b"/\x00", one_host, "invalid request target"),
            (b"GET", b"/a b", one_host, "invalid request target"),
            (b"GET", b"/", Headers({b"host": [b"a", b"b"]}), "more than one Host header"),
        ]
        for method, target, headers, problem in cases:
            self.assertEqual(unsendable(method, target, headers), problem, (method, target))

    def test_agent_fails_before_connecting(self) -> None:
        reactor = MemoryReactorClock()
        agent = BackendAgent(reactor, pool=BackendConnectionPool(reactor))
        sent = agent.send(route("http://10.0.0.5:80"), b"G T", b"/", Headers(), None)
        self.failureResultOf(sent, UnsendableRequest)
        self.assertEqual(reactor.tcpClients, [])


class ReuseTests(unittest.SynchronousTestCase):
    def harness(self, keepalive: str) -> ProxyHarness:
        harness = ProxyHarness(
            f"""
[proxy]
listen = tcp:8080
pool = web
backend_keepalive = {keepalive}

[pool:web]
servers = http://127.0.0.1:8001
"""
        )
        self.addCleanup(harness.stop)
        return harness

    def test_idle_connection_is_reused(self) -> None:
        harness = self.harness("8")
        for _ in range(3):
            self.assertEqual(harness.request().status, 200)
        backend = harness.backend("127.0.0.1:8001")
        self.assertEqual((len(backend.seen), backend.connections), (3, 1))

    def test_no_keepalive_means_a_connection_per_request(self) -> None:
        harness = self.harness("0")
        for _ in range(3):
            harness.request()
        self.assertEqual(harness.backend("127.0.0.1:8001").connections, 3)


class IdleTimerTests(unittest.SynchronousTestCase):
    """
    An idle backend connection closes cachedConnectionTimeout seconds after
    it last went back to the pool, as in Twisted's pool; its one timer is
    moved rather than cancelled and made again per request.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from lbproxy.upstream.backend import _BackendProtocol

        self.clock = Clock()
        self.pool = BackendConnectionPool(self.clock, persistent=True)
        self.pool.cachedConnectionTimeout = 10  # type: ignore[assignment]
        self.key = route("http://127.0.0.1:8001").key
        self.connection = _BackendProtocol(lambda p: None)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def put(self) -> None:
        self.pool._putConnection(self.key, self.connection)  # type: ignore[no-untyped-call]

    def take(self) -> None:
        taken = self.pool.idle_connection(self.key, route("http://127.0.0.1:8001").endpoint)
        self.assertIs(taken._clientProtocol, self.connection)  # type: ignore[union-attr]

    def test_an_idle_connection_closes_its_timeout_after_it_came_back(self) -> None:
        self.put()
        self.clock.advance(5)
        self.take()
        # Busy past the timeout: the timer runs out and leaves it alone.
        self.clock.advance(20)
        self.assertFalse(self.transport.disconnecting)
        self.put()
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.pool._connections[self.key], [])

    def test_a_connection_back_in_the_pool_moves_its_one_timer(self) -> None:
        self.put()
        self.clock.advance(5)
        self.take()
        self.clock.advance(1)
        self.put()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.pool._connections[self.key], [self.connection])
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnecting)

    def test_a_closed_connection_cancels_its_idle_timer(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.put()
        self.take()
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
