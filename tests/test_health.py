"""
Health checks and the log: a proxy whose servers are steady writes nothing
while it checks them; a change of state is one line.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS

from lbproxy.upstream.health import HealthChecker, http_probe
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
