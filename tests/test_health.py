"""
Health checks and the log: a proxy whose servers are steady writes nothing
while it checks them; a change of state is one line.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, List, Tuple

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS
from zope.interface import implementer

from lbproxy.upstream.health import HealthChecker, describe_failure, http_probe
from lbproxy.upstream.pool import ServerState
from tests.support import Backend, ProxyTestCase, proxy_config, wait_until
from tests.test_pool import make_pool
from tests.test_twistd import run, tool


def capture_log(test: unittest.TestCase) -> List[str]:
    """Every log event from now to the end of the test, as text."""
    lines: List[str] = []

    def observer(event: Dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


def health_handler(backend: Backend, request: Any, body: bytes) -> bytes:
    """Answers /healthz with the status in C{backend.health} (200 unless set)."""
    request.setResponseCode(getattr(backend, "health", 200))
    return b"ok\n"


class QuietLogTests(unittest.TestCase):
    def test_a_minute_of_checks_logs_only_the_changes(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a", "http://b:1 name=b"],
            clock,
            health_check="GET /healthz",
            health_interval="1s",
        )
        passing = {"a": True, "b": True}
        checks = []

        def probe(server: ServerState) -> Deferred[Tuple[bool, str]]:
            checks.append(server.name)
            ok = passing[server.name]
            return succeed((ok, "status 200" if ok else "status 503"))

        lines = capture_log(self)
        checker = HealthChecker(pool, probe, clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        for tenth in range(600):
            passing["b"] = not 200 <= tenth < 400  # failing from 20 s to 40 s
            clock.advance(0.1)
        self.assertGreater(len(checks), 100)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("server b is DOWN: 3 failed health checks, last: status 503", lines[0])
        self.assertIn("server b is UP: 2 passed health checks, last: status 200", lines[1])

    @defer.inlineCallbacks
    def test_real_checks_over_a_minute_of_fake_time_log_only_the_changes(self):  # type: ignore[no-untyped-def]
        # Real probes over real sockets (a new connection each), timed by a
        # fake clock: Twisted's "Starting factory" / "Stopping factory" lines
        # would be two per check.
        backend = Backend("a", health_handler)
        self.addCleanup(backend.stop)
        clock = Clock()
        pool = make_pool(
            [f"{backend.url} name=a"], clock, health_check="GET /healthz", health_interval="1s"
        )
        probe = http_probe(reactor, pool.config, BrowserLikePolicyForHTTPS())
        started: List[str] = []
        finished = []

        def counted(server: ServerState) -> Deferred[Tuple[bool, str]]:
            started.append(server.name)
            return probe(server).addBoth(lambda outcome: finished.append(outcome) or outcome)

        lines = capture_log(self)
        checker = HealthChecker(pool, counted, clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        for second in range(60):
            backend.health = 503 if 20 <= second < 40 else 200  # type: ignore[attr-defined]
            clock.advance(1.1)  # at least one check is due
            yield wait_until(lambda: len(finished) == len(started))
        self.assertGreater(len(finished), 45)
        self.assertEqual(len(backend.seen), len(finished))
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("server a is DOWN", lines[0])
        self.assertIn("server a is UP", lines[1])


class QuietProxyTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_forwarding_over_new_connections_logs_nothing(self):  # type: ignore[no-untyped-def]
        backend = self.backend("a")
        self.start_proxy(proxy_config([backend.url], backend_keepalive="0"))
        lines = capture_log(self)
        for _ in range(10):
            response = yield self.fetch()
            self.assertEqual(response.body, b"a\n")
        self.assertEqual(backend.connections, 10)
        self.assertEqual(lines, [])


class QuietProcessTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_twistd_log_does_not_grow_with_checks(self):  # type: ignore[no-untyped-def]
        backend = Backend("a", health_handler)
        self.addCleanup(backend.stop)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                proxy_config(
                    [backend.url],
                    # The default health_timeout follows the short interval.
                    pool={"health_check": "GET /healthz", "health_interval": "50ms"},
                )
            )
        proc = run(self, tool("twistd"), "-n", "--pidfile=", "lbproxy", "-c", path)
        yield proc.wait_for(rb"lbproxy listening on")
        yield wait_until(lambda: len(backend.seen) >= 5)
        before = proc.output.count(b"\n")
        yield wait_until(lambda: len(backend.seen) >= 45)
        self.assertEqual(proc.output.count(b"\n"), before, proc.output.decode())
        self.assertNotIn(b"factory", proc.output)


class OverlapTests(unittest.TestCase):
    def test_a_timeout_longer_than_the_interval_never_overlaps_checks(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a"],
            clock,
            health_check="GET /healthz",
            health_interval="1s",
            health_timeout="3s",
        )
        started: List[float] = []
        running: List[Deferred[Tuple[bool, str]]] = []

        def never_answers(server: ServerState) -> Deferred[Tuple[bool, str]]:
            self.assertEqual([d for d in running if not d.called], [], "checks overlap")
            started.append(clock.seconds())
            d: Deferred[Tuple[bool, str]] = Deferred()
            running.append(d)
            return d

        checker = HealthChecker(pool, never_answers, clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        for _ in range(200):
            clock.advance(0.1)
        # One check every timeout + interval (+-10%): 3.9 to 4.1 s apart, seen
        # in steps of 0.1 s.
        gaps = [b - a for a, b in zip(started, started[1:])]
        self.assertEqual(len(started), 5, started)
        for gap in gaps:
            self.assertTrue(3.85 <= gap <= 4.25, gaps)
        self.assertEqual(pool.servers[0].last_check, "no answer within 3s")
        self.assertFalse(pool.servers[0].up)


class _Scripted(Protocol):
    """A server that answers a request head with C{factory.answer}, in its pieces."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received:
            for piece in self.factory.answer:  # type: ignore[attr-defined]
                self.transport.write(piece)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.lost.append(reason)  # type: ignore[attr-defined]


@implementer(IHostnameResolver)
class _NoResolver:
    """A name resolver that fails the test if it is asked."""

    asked: List[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        self.asked.append(hostName)
        raise AssertionError(f"{hostName} looked up")


class ProbeTests(unittest.TestCase):
    """The real probe (treq), over real connections, against real and scripted servers."""

    def setUp(self) -> None:
        # A server given by its address is connected to at once: no name
        # resolution (Twisted's resolves even an address, in a thread).
        resolver = _NoResolver()
        resolver.asked = []
        self.resolver = resolver
        self.addCleanup(reactor.installNameResolver, reactor.installNameResolver(resolver))  # type: ignore[attr-defined]

    def scripted(self, *answer: bytes) -> Tuple[Factory, int]:
        factory = Factory.forProtocol(_Scripted)
        factory.noisy = False
        factory.answer = answer  # type: ignore[attr-defined]
        factory.connections, factory.lost = [], []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def check(self, url: str, **options: str) -> Deferred[Tuple[bool, str]]:
        pool = make_pool([f"{url} name=a"], Clock(), health_check="GET /healthz", **options)
        probe = http_probe(reactor, pool.config, BrowserLikePolicyForHTTPS())
        return probe(pool.servers[0]).addErrback(
            lambda failure: (False, describe_failure(failure, pool.config.health_timeout))
        )

    @defer.inlineCallbacks
    def test_status_within_health_expect_passes(self):  # type: ignore[no-untyped-def]
        backend = Backend("a", health_handler)
        self.addCleanup(backend.stop)
        self.assertEqual((yield self.check(backend.url)), (True, "status 200"))
        backend.health = 503  # type: ignore[attr-defined]
        self.assertEqual((yield self.check(backend.url)), (False, "status 503"))
        self.assertEqual(
            (yield self.check(backend.url, health_expect="500-503")), (True, "status 503")
        )
        seen = backend.seen[0]
        self.assertEqual((seen.method, seen.uri), (b"GET", b"/healthz"))
        self.assertEqual(seen.header(b"host"), [backend.url[len("http://") :].encode()])
        self.assertEqual(seen.header(b"user-agent"), [b"lbproxy-health-check"])
        self.assertEqual(backend.connections, 3)  # a new connection each
        self.assertEqual(self.resolver.asked, [])

    @defer.inlineCallbacks
    def test_health_host_is_sent(self):  # type: ignore[no-untyped-def]
        backend = Backend("a", health_handler)
        self.addCleanup(backend.stop)
        outcome = yield self.check(backend.url, health_host="app.example.com")
        self.assertEqual(outcome, (True, "status 200"))
        self.assertEqual(backend.seen[0].header(b"host"), [b"app.example.com"])

    @defer.inlineCallbacks
    def test_an_interim_answer_is_skipped(self):  # type: ignore[no-untyped-def]
        _, port = self.scripted(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        self.assertEqual((yield self.check(f"http://127.0.0.1:{port}")), (True, "status 204"))

    @defer.inlineCallbacks
    def test_an_answer_that_is_not_http_fails(self):  # type: ignore[no-untyped-def]
        _, port = self.scripted(b"SSH-2.0-OpenSSH_9.2\r\n")
        ok, detail = yield self.check(f"http://127.0.0.1:{port}", health_timeout="2s")
        self.assertFalse(ok)
        self.assertTrue(detail.startswith("ResponseFailed"), detail)

    @defer.inlineCallbacks
    def test_refused_connection_fails(self):  # type: ignore[no-untyped-def]
        yield None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        ok, detail = yield self.check(f"http://127.0.0.1:{free}")
        self.assertFalse(ok)
        self.assertTrue(detail.startswith("ConnectionRefusedError"), detail)

    @defer.inlineCallbacks
    def test_timeout_closes_the_connection(self):  # type: ignore[no-untyped-def]
        factory, port = self.scripted()  # never answers
        pool = make_pool([f"http://127.0.0.1:{port} name=a"], Clock(), health_check="GET /healthz")
        probe = http_probe(reactor, pool.config, BrowserLikePolicyForHTTPS())
        probing = probe(pool.servers[0])
        yield wait_until(lambda: factory.connections)  # type: ignore[attr-defined]
        yield wait_until(lambda: b"\r\n\r\n" in factory.connections[0].received)  # type: ignore[attr-defined]
        probing.addTimeout(0.05, reactor)
        outcome = yield probing.addErrback(lambda failure: describe_failure(failure, 0.05))
        self.assertEqual(outcome, "no answer within 0.05s")
        yield wait_until(lambda: factory.lost)  # type: ignore[attr-defined]
