"""
lbproxy.service: the composition root, in memory (L{lbproxy.testing}): a
configuration to pools, health checks, routes and listeners; a reload that
keeps the running state of the servers that stay; a stop that closes the
listeners.  The same over real sockets is in L{tests.test_reload}.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.trial import unittest
from zope.interface import implementer

from lbproxy.config import ServerConfig
from lbproxy.front.resource import Routes
from lbproxy.reload import server_key
from lbproxy.service import GC_THRESHOLDS, ProxyService, StartError, settle_heap
from lbproxy.testing import MemoryNetworkReactor, ProxyHarness
from lbproxy.upstream.health import HealthChecker

A, B, C = "http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"

TWO_POOLS = f"""
[proxy]
listen = tcp:8080:interface=127.0.0.1
    tcp:8081:interface=127.0.0.1
pool = web
shutdown_timeout = 5s

[pool:web]
servers =
    {A} name=a
    {B} name=b
health_check = GET /healthz
health_interval = 1s

[pool:api]
servers = {C} name=c

[route:api]
path = /api
pool = api
"""


@implementer(IListeningPort)
class RecordedPort:
    """A listening port that remembers being closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = 0

    def startListening(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> Any:  # noqa: N802
        self.stopped += 1
        return succeed(None)

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", "127.0.0.1", self.port)


class RecordingReactor(MemoryNetworkReactor):
    def __init__(self) -> None:
        super().__init__()
        self.listening: List[RecordedPort] = []
        self.busy: List[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:  # noqa: N802
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        recorded = RecordedPort(port)
        self.listening.append(recorded)
        return recorded


class ServiceTests(unittest.SynchronousTestCase):
    def harness(self, text: str = TWO_POOLS, **kwargs: Any) -> ProxyHarness:
        harness = ProxyHarness(text, **kwargs)
        self.addCleanup(harness.stop)
        return harness

    def test_a_configuration_becomes_pools_checks_and_routes(self) -> None:
        harness = self.harness()
        service = harness.service
        self.assertEqual(sorted(service.pools), ["api", "web"])
        self.assertEqual([s.name for s in service.pools["web"].servers], ["a", "b"])
        self.assertEqual(sorted(service.checkers), ["web"])  # only the pool with a check
        self.assertIsInstance(service.checkers["web"], HealthChecker)
        self.assertIn(service.checkers["web"], list(service))
        routes = service.resource.routes
        self.assertIsInstance(routes, Routes)
        self.assertEqual(sorted(routes.forwarders), ["api", "web"])  # type: ignore[union-attr]
        self.assertEqual(harness.request("GET", "/api/x").body, C.encode())
        self.assertEqual(harness.request("GET", "/other").body, A.encode())

    def test_nothing_listens_before_the_start_everything_after(self) -> None:
        reactor = RecordingReactor()
        service = ProxyService(ProxyHarness(TWO_POOLS, start=False).config, reactor)
        self.assertEqual((service.ports, reactor.listening), ({}, []))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            sorted(service.ports), ["tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1"]
        )
        self.assertEqual(sorted(p.port for p in reactor.listening), [8080, 8081])

    def test_reload_keeps_the_state_of_the_servers_that_stay(self) -> None:
        harness = self.harness()
        service = harness.service
        web = service.pools["web"]
        kept = web.by_name["b"]
        for _ in range(2):
            harness.request("GET", "/")
        served = kept.stats.served
        self.assertEqual(served, 1)
        web.drain(kept)
        harness.reload(TWO_POOLS.replace(f"{A} name=a", f"{C} name=c2"))
        self.assertIs(service.pools["web"], web)
        self.assertEqual([s.name for s in web.servers], ["c2", "b"])
        self.assertIs(web.by_name["b"], kept)
        self.assertEqual((kept.state, kept.stats.served), ("DRAINING", served))
        self.assertEqual(service.reloads, {"ok": 1, "refused": 0})
        self.assertEqual(harness.request("GET", "/").body, C.encode())

    def test_reload_removes_a_pool_and_its_checks(self) -> None:
        harness = self.harness()
        old_checker = harness.service.checkers["web"]
        harness.reload(TWO_POOLS.replace("health_check = GET /healthz\n", ""))
        self.assertEqual(harness.service.checkers, {})
        self.assertIsNone(old_checker.parent)
        without_api = TWO_POOLS.split("[pool:api]")[0]
        harness.reload(without_api.replace("health_check = GET /healthz\n", ""))
        self.assertEqual(sorted(harness.service.pools), ["web"])
        self.assertEqual(harness.request("GET", "/api/x").body, A.encode())

    def test_stop_closes_every_listener_and_the_pools(self) -> None:
        reactor = RecordingReactor()
        harness = ProxyHarness(TWO_POOLS, clock=reactor)
        service = harness.service
        self.assertEqual(len(reactor.listening), 2)
        stopped = service.stopService()
        self.assertEqual([p.stopped for p in reactor.listening], [1, 1])
        self.assertEqual(service.ports, {})
        reactor.advance(5)  # shutdown_timeout
        self.successResultOf(stopped)
        self.assertFalse(service.running)
        self.assertEqual(reactor.getDelayedCalls(), [])  # health checks and timers gone

    def test_a_reload_that_cannot_listen_changes_nothing(self) -> None:
        """
        The reload plan (lbproxy.reload): what can fail is done first; a new
        listener opened before another failed is closed again, and the
        running pools, routes and listeners stay as they were.
        """
        reactor = RecordingReactor()
        harness = self.harness(clock=reactor)
        service = harness.service
        ports, routes, web = dict(service.ports), service.resource.routes, service.pools["web"]
        reactor.busy.append(8083)
        text = TWO_POOLS.replace(
            "    tcp:8081:interface=127.0.0.1",
            "    tcp:8082:interface=127.0.0.1\n    tcp:8083:interface=127.0.0.1",
        )
        with self.assertRaises(StartError) as caught:
            harness.reload(text.replace(f"{A} name=a", f"{C} name=c2"))
        self.assertIn("cannot listen on tcp:8083:interface=127.0.0.1", str(caught.exception))
        opened = [p for p in reactor.listening if p.port == 8082]
        self.assertEqual([p.stopped for p in opened], [1])
        self.assertEqual(service.ports, ports)
        self.assertIs(service.resource.routes, routes)
        self.assertEqual([s.name for s in web.servers], ["a", "b"])
        self.assertEqual(service.reloads["ok"], 0)


class ServerKeyTests(unittest.SynchronousTestCase):
    def test_a_server_stays_across_a_reload_by_name_and_address(self) -> None:
        def server(url: str, host: str, port: int, name: str, weight: int = 1) -> ServerConfig:
            return ServerConfig(url, "http", host, port, weight=weight, name=name)

        same = server("http://h:1", "h", 1, "a")
        self.assertEqual(server_key(same), server_key(server("http://h:1", "h", 1, "a", weight=5)))
        for other in (
            server("http://h:1", "h", 1, "b"),
            server("http://h:2", "h", 2, "a"),
            server("http://g:1", "g", 1, "a"),
        ):
            self.assertNotEqual(server_key(same), server_key(other), other)


class SettleHeapTests(unittest.SynchronousTestCase):
    """
    L{settle_heap}: once start-up is over, collect, freeze what is left and
    set the serving thresholds (CPython); nothing where the collector has no
    freeze (PyPy).
    """

    def test_collect_then_freeze_then_thresholds(self) -> None:
        calls: List[Any] = []

        class Collector:
            def collect(self) -> int:
                calls.append("collect")
                return 0

            def freeze(self) -> None:
                calls.append("freeze")

            def set_threshold(self, *thresholds: int) -> None:
                calls.append(thresholds)

        self.assertTrue(settle_heap(Collector()))
        self.assertEqual(calls, ["collect", "freeze", GC_THRESHOLDS])

    def test_a_collector_without_freeze_is_left_alone(self) -> None:
        calls: List[str] = []

        class PyPyLike:
            def collect(self) -> int:
                calls.append("collect")
                return 0

        self.assertFalse(settle_heap(PyPyLike()))
        self.assertEqual(calls, [])

    def test_this_interpreter(self) -> None:
        """
        With the real C{gc}: on CPython the start-up objects are frozen (a
        cycle made before is collected first, not frozen) and the
        thresholds set; on PyPy nothing happens.
        """
        import gc
        import weakref

        if not hasattr(gc, "freeze"):
            self.assertFalse(settle_heap())
            return
        old = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *old)
        self.addCleanup(gc.unfreeze)

        class Node:
            pass

        cycle = Node()
        cycle.other = Node()  # type: ignore[attr-defined]
        cycle.other.other = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        self.assertTrue(settle_heap())
        self.assertIsNone(gone())
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
