"""
DNS discovery's schedule and its effect on a pool, with time as a parameter:
a scripted lookup and task.Clock (lbproxy.upstream.discovery).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial import unittest

from lbproxy.config import parse
from lbproxy.config.dns import DnsEntry, Found
from lbproxy.config.found import all_servers
from lbproxy.reload import server_key
from lbproxy.upstream.discovery import LOOKUP_DEADLINE, Discovery, update_pool
from lbproxy.upstream.health import HealthChecker
from lbproxy.upstream.pool import WEIGHT_SCALE, Pool, ServerState


def pool_config(servers: str, extra: str = "") -> Any:
    lines = "".join(f"    {line}\n" for line in servers.strip().splitlines())
    text = f"[proxy]\nlisten = tcp:1\n[pool:web]\n{extra}servers =\n{lines}"
    return parse(text, "t.ini").pools["web"]


class ScriptedLookups:
    """Lookups that wait for the test to answer them."""

    def __init__(self) -> None:
        self.pending: List[Tuple[Any, DnsEntry, defer.Deferred[Any]]] = []

    def __call__(self, resolver: Any, entry: DnsEntry) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((resolver, entry, d))
        return d

    def answer(self, found: Tuple[Found, ...], ttl: Optional[float]) -> None:
        _, _, d = self.pending.pop(0)
        d.callback((found, ttl))

    def fail(self, reason: Exception) -> None:
        _, _, d = self.pending.pop(0)
        d.errback(reason)


def addresses(*last: int, port: int = 80) -> Tuple[Found, ...]:
    return tuple(Found(0, None, port, f"10.0.0.{n}") for n in last)


class CapturedLog:
    def __init__(self, case: unittest.TestCase) -> None:
        self.events: List[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, text: str) -> List[str]:
        from twisted.logger import formatEvent

        found = [
            formatEvent(e) for e in self.events if e.get("log_namespace", "").startswith("lbproxy")
        ]
        return [line for line in found if text in line]


class ScheduleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.lookups = ScriptedLookups()
        self.changes = 0
        self.log = CapturedLog(self)

    def discovery(self, servers: str = "dns://app.test", extra: str = "") -> Discovery:
        config = pool_config(servers, extra)

        def changed() -> None:
            self.changes += 1

        discovery = Discovery(config, "resolver", self.clock, changed, self.lookups)
        discovery.startService()
        self.addCleanup(discovery.stopService)
        return discovery

    def test_resolves_again_when_the_ttl_runs_out_bounded(self) -> None:
        discovery = self.discovery(extra="dns_min_ttl = 2s\ndns_max_ttl = 30s\n")
        self.assertEqual(len(self.lookups.pending), 1)
        for ttl, expected in [(10.0, 10.0), (0.0, 2.0), (3600.0, 30.0), (None, 2.0)]:
            self.lookups.answer(addresses(1), ttl)
            self.clock.advance(expected - 0.25)
            self.assertEqual(self.lookups.pending, [], ttl)
            self.clock.advance(0.25)
            self.assertEqual(len(self.lookups.pending), 1, ttl)
        self.assertEqual(discovery.answers, {"dns://app.test:80": addresses(1)})
        # Four answers, one change.
        self.assertEqual(self.changes, 1)
        self.assertEqual(len(self.log.lines("dns://app.test:80: 1 server found: 10.0.0.1:80")), 1)

    def test_a_change_calls_back_and_is_logged(self) -> None:
        self.discovery()
        self.lookups.answer(addresses(1, 2), 1)
        self.clock.advance(1)
        self.lookups.answer(addresses(2, 3), 1)
        self.assertEqual(self.changes, 2)
        self.assertEqual(
            self.log.lines("pool web: dns://app.test:80: added 10.0.0.3:80; removed 10.0.0.1:80"),
            ["pool web: dns://app.test:80: added 10.0.0.3:80; removed 10.0.0.1:80; now 2 servers"],
        )

    def test_an_empty_answer_removes_the_servers(self) -> None:
        discovery = self.discovery()
        self.lookups.answer(addresses(1), 1)
        self.clock.advance(1)
        self.lookups.answer((), None)
        self.assertEqual(discovery.answers, {"dns://app.test:80": ()})
        self.assertEqual(self.changes, 2)
        self.assertEqual(
            len(
                self.log.lines(
                    "DNS names no server (no such name, or no records); pool web has no server: requests get 503"
                )
            ),
            1,
        )

    def test_failures_keep_the_last_answer_back_off_and_log_once(self) -> None:
        discovery = self.discovery(extra="dns_min_ttl = 1s\ndns_max_ttl = 10s\n")
        self.lookups.answer(addresses(1, 2), 5)
        self.clock.advance(5)
        delays = []
        for _ in range(6):
            self.lookups.fail(defer.TimeoutError())
            start = self.clock.seconds()
            while not self.lookups.pending:
                self.clock.advance(0.5)
            delays.append(self.clock.seconds() - start)
        self.assertEqual(delays, [1, 2, 4, 8, 10, 10])
        self.assertEqual(discovery.answers, {"dns://app.test:80": addresses(1, 2)})
        self.assertEqual(self.changes, 1)
        self.assertEqual(
            self.log.lines("cannot resolve"),
            [
                "pool web: cannot resolve dns://app.test:80: no answer in time; "
                "keeping the 2 servers of its last answer (retrying)"
            ],
        )
        self.lookups.answer(addresses(1, 2), 5)
        self.assertEqual(
            self.log.lines("resolves again"),
            ["pool web: dns://app.test:80 resolves again, after 6 failed lookups"],
        )
        self.assertEqual(self.changes, 1)
        # Back to the TTL, and a new failure is logged again.
        self.clock.advance(5)
        self.lookups.fail(defer.TimeoutError())
        self.assertEqual(len(self.log.lines("cannot resolve")), 2)

    def test_a_name_that_never_resolved_says_the_pool_is_empty(self) -> None:
        discovery = self.discovery("dns+srv://_http._tcp.app.test")
        from twisted.names.error import DNSServerError

        self.lookups.fail(DNSServerError("x"))
        self.assertEqual(discovery.answers, {})
        self.assertEqual(
            self.log.lines("cannot resolve"),
            [
                "pool web: cannot resolve dns+srv://_http._tcp.app.test: server failure "
                "(SERVFAIL); no servers from it until it resolves; pool web has no server: "
                "requests get 503 (retrying)"
            ],
        )
        self.assertEqual(self.changes, 0)

    def test_a_lookup_that_never_ends_is_given_up(self) -> None:
        self.discovery(extra="dns_min_ttl = 1s\n")
        _, _, first = self.lookups.pending[0]
        self.clock.advance(LOOKUP_DEADLINE)
        self.assertTrue(first.called)
        self.assertEqual(len(self.log.lines("no answer in time")), 1)
        self.lookups.pending.clear()
        self.clock.advance(1)
        self.assertEqual(len(self.lookups.pending), 1)

    def test_stop_cancels_timers_and_lookups(self) -> None:
        discovery = self.discovery("dns://a.test\ndns://b.test")
        self.lookups.answer(addresses(1), 30)
        _, _, running = self.lookups.pending[0]
        discovery.stopService()
        self.assertTrue(running.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.changes, 1)

    def test_reconfigure_keeps_stays_starts_new_and_stops_removed(self) -> None:
        discovery = self.discovery("dns://a.test\ndns://b.test")
        self.lookups.answer(addresses(1), 30)
        self.lookups.answer(addresses(2), 30)
        self.assertEqual(self.timers(), [30, 30])
        discovery.reconfigure(pool_config("dns://a.test weight=2\ndns://c.test"), "resolver")
        # a stays (its answer and timer), b is gone, c is looked up now.
        self.assertEqual(discovery.answers, {"dns://a.test:80": addresses(1)})
        self.assertEqual([e.source for _, e, _ in self.lookups.pending], ["dns://c.test:80"])
        # a's next lookup, c's lookup deadline.
        self.assertEqual(self.timers(), [LOOKUP_DEADLINE, 30])
        self.assertEqual(discovery.config.discovery[0].weight, 2)
        # A new resolver: everything is looked up again, with it.
        self.lookups.answer(addresses(3), 30)
        discovery.reconfigure(discovery.config, "other resolver")
        self.assertEqual(
            [(r, e.source) for r, e, _ in self.lookups.pending],
            [("other resolver", "dns://a.test:80"), ("other resolver", "dns://c.test:80")],
        )
        self.assertEqual(self.timers(), [LOOKUP_DEADLINE, LOOKUP_DEADLINE])

    def timers(self) -> List[float]:
        return sorted(c.getTime() - self.clock.seconds() for c in self.clock.getDelayedCalls())


class PoolUpdateTests(unittest.TestCase):
    """A new answer applies to the pool like a reload of it."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.config = pool_config(
            "http://10.0.0.100:80\ndns://app.test", "slow_start = 10s\nhealth_check = GET /\n"
        )
        self.events: List[Tuple[str, str]] = []
        self.pool = Pool(self.config, [ServerState(s) for s in self.config.servers], self.clock)
        self.pool.on_change = lambda server, what, detail: self.events.append((server.name, what))

    def apply(self, *last: int) -> Tuple[List[ServerState], List[ServerState]]:
        servers = all_servers(self.config, {"dns://app.test:80": addresses(*last)})
        return update_pool(self.pool, servers, lambda s: ("route", s.name), server_key)

    def test_servers_that_stay_keep_their_state_new_ones_slow_start(self) -> None:
        fixed = self.pool.servers[0]
        added, removed = self.apply(1, 2)
        self.assertEqual([s.name for s in added], ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(removed, [])
        first = self.pool.by_name["10.0.0.1:80"]
        self.assertEqual(first.route, ("route", "10.0.0.1:80"))
        self.assertEqual(first.weight, WEIGHT_SCALE // 10)
        self.assertIs(self.pool.servers[0], fixed)
        self.pool.dispatch(first)
        self.pool.drain(self.pool.by_name["10.0.0.2:80"])
        self.clock.advance(10)
        self.assertEqual(first.weight, WEIGHT_SCALE)

        added, removed = self.apply(1, 3)
        self.assertEqual([s.name for s in added], ["10.0.0.3:80"])
        self.assertEqual([s.name for s in removed], ["10.0.0.2:80"])
        self.assertIs(self.pool.by_name["10.0.0.1:80"], first)
        self.assertEqual(first.active, 1)
        self.assertEqual(first.weight, WEIGHT_SCALE)
        self.assertEqual(
            [s.name for s in self.pool.servers], ["10.0.0.100:80", "10.0.0.1:80", "10.0.0.3:80"]
        )
        # A removed server gets no requests; one in flight to it is released on it.
        names = {s.name for s in self.pool.candidates()}
        self.assertEqual(names, {"10.0.0.100:80", "10.0.0.1:80", "10.0.0.3:80"})
        self.pool.release(first)
        self.assertEqual(first.active, 0)
        self.assertEqual(
            self.events,
            [
                ("10.0.0.1:80", "added"),
                ("10.0.0.2:80", "added"),
                ("10.0.0.2:80", "drained"),
                ("10.0.0.3:80", "added"),
                ("10.0.0.2:80", "removed"),
            ],
        )

    def test_health_checks_follow_the_servers(self) -> None:
        probed: List[str] = []

        def probe(server: ServerState) -> defer.Deferred[Tuple[bool, str]]:
            probed.append(server.name)
            return defer.succeed((False, "status 500"))

        checker = HealthChecker(self.pool, probe, self.clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        self.apply(1)
        checker.servers_changed()
        for _ in range(4):
            self.clock.advance(self.config.health_interval * 1.1)
        self.assertEqual(set(probed), {"10.0.0.100:80", "10.0.0.1:80"})
        self.assertEqual(self.pool.by_name["10.0.0.1:80"].state, "DOWN")
        self.apply(2)
        checker.servers_changed()
        probed.clear()
        for _ in range(4):
            self.clock.advance(self.config.health_interval * 1.1)
        self.assertEqual(set(probed), {"10.0.0.100:80", "10.0.0.2:80"})
        # The checks of both servers, the new server's slow start.
        self.assertEqual(len(self.clock.getDelayedCalls()), 3)


class AnswersSeenByTheServiceTests(unittest.TestCase):
    def test_answers_map_sources(self) -> None:
        config = pool_config("dns://a.test\ndns://b.test")
        lookups = ScriptedLookups()
        discovery = Discovery(config, None, task.Clock(), lambda: None, lookups)
        discovery.startService()
        self.addCleanup(discovery.stopService)
        lookups.answer(addresses(1), 1)
        answers: Dict[str, Any] = discovery.answers
        self.assertEqual(answers, {"dns://a.test:80": addresses(1)})
