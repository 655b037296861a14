"""
DNS discovery over real sockets: an authoritative DNS server on loopback
(twisted.names, records the test changes), real HTTP backends on 127.0.0.x
found through it, the proxy in between, and http.client as the client.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer, reactor
from twisted.logger import formatEvent
from twisted.names import dns
from twisted.web import server

from lbproxy.config.dns import ADDRESS, SRV, DnsEntry, Found
from lbproxy.upstream.discovery import QuietResolver, lookup, make_resolver
from lbproxy.upstream.pool import WEIGHT_SCALE
from tests.dns_support import DNSServer, Zone
from tests.support import Backend, ProxyTestCase, default_handler, held_handler, wait_until
from tests.test_discovery import CapturedLog

SRV_NAME = "_http._tcp.app.test"


def format_all(events: List[Any]) -> List[str]:
    return [formatEvent(e) for e in events]


class DNSTestCase(ProxyTestCase):
    def setUp(self) -> None:
        self.zone = Zone()
        self.dns = DNSServer(self.zone)
        self.addCleanup(self.dns.stop)
        self.log = CapturedLog(self)

    def resolver(self) -> QuietResolver:
        resolver = QuietResolver(servers=[self.dns.address], timeout=(1,))
        self.addCleanup(resolver.close)
        return resolver

    def publish(self, *backends: Backend, priority: int = 10) -> None:
        """SRV records naming each backend (target bN.app.test, port, weight 1)."""
        records = []
        for backend in backends:
            target = f"{backend.name}.app.test"
            self.zone.a(target, "127.0.0.1")
            records.append((priority, 1, backend.port.getHost().port, target))
        self.zone.srv(SRV_NAME, *records)

    def start(self, servers: str, extra: str = "") -> Any:
        text = (
            f"[proxy]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"resolver = {self.dns.address[0]}:{self.dns.address[1]}\n"
            f"[pool:web]\nalgorithm = round_robin\ndns_min_ttl = 100ms\nretries = 0\n{extra}"
            f"servers =\n" + "".join(f"    {line}\n" for line in servers.strip().splitlines())
        )
        return self.start_proxy(text)

    def names(self) -> List[str]:
        return sorted(s.name for s in self.proxy.pools["web"].servers)

    @defer.inlineCallbacks
    def bodies(self, count: int):  # type: ignore[no-untyped-def]
        seen = []
        for _ in range(count):
            response = yield self.fetch()
            seen.append((response.status, response.body.strip().decode()))
        return seen


class LookupTests(DNSTestCase):
    """lbproxy.discovery.lookup against the server."""

    @defer.inlineCallbacks
    def test_srv_targets_from_the_additional_section_or_looked_up(self):  # type: ignore[no-untyped-def]
        self.zone.ttl = 30
        self.zone.srv(SRV_NAME, (10, 5, 8001, "b1.app.test"), (20, 1, 8002, "b2.app.test"))
        self.zone.a("b1.app.test", "127.0.0.2")
        self.zone.a("b2.app.test", "127.0.0.3", "127.0.0.1")
        entry = DnsEntry(f"dns+srv://{SRV_NAME}", SRV, SRV_NAME)
        expected = (
            Found(10, "b1.app.test", 8001, "127.0.0.2", 5),
            Found(20, "b2.app.test", 8002, "127.0.0.1", 1),
        )
        found, ttl = yield lookup(self.resolver(), entry)
        self.assertEqual((tuple(sorted(found)), ttl), (expected, 30.0))
        self.zone.glue = False
        del self.zone.queries[:]
        found, ttl = yield lookup(self.resolver(), entry)
        self.assertEqual((tuple(sorted(found)), ttl), (expected, 30.0))
        self.assertIn(("b2.app.test", dns.AAAA), self.zone.queries)

    @defer.inlineCallbacks
    def test_one_quiet_port_for_every_query(self):  # type: ignore[no-untyped-def]
        # twisted.names' own resolver opens (and logs) a UDP port per query.
        self.zone.a("app.test", "127.0.0.2")
        resolver = self.resolver()
        entry = DnsEntry("d", ADDRESS, "app.test", 80)
        for _ in range(5):
            found, _ = yield lookup(resolver, entry)
            self.assertEqual([f.address for f in found], ["127.0.0.2"])
        self.assertEqual(len(self.zone.queries), 10)
        lines = [formatEvent(e) for e in self.log.events]
        self.assertEqual(
            [line for line in lines if "UDP" in line or "starting on" in line],
            [line for line in lines if "starting on" in line],
        )
        self.assertEqual(len([line for line in lines if "starting on" in line]), 1)
        yield resolver.close()
        self.assertEqual(len([line for line in format_all(self.log.events) if "Closed" in line]), 1)

    def test_the_system_resolver_reads_resolv_conf(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search example.com\nnameserver 10.9.8.7\n")
        resolver = make_resolver(None, reactor, path)
        self.assertEqual(resolver.servers, [("10.9.8.7", 53)])
        self.assertEqual(
            make_resolver(None, reactor, path + ".missing").servers, [("127.0.0.1", 53)]
        )
        self.assertEqual(make_resolver((("::1", 5353),), reactor).servers, [("::1", 5353)])

    @defer.inlineCallbacks
    def test_a_target_without_address_names_no_server(self):  # type: ignore[no-untyped-def]
        self.zone.srv(SRV_NAME, (10, 1, 8001, "gone.app.test"), (10, 1, 8002, "b1.app.test"))
        self.zone.a("b1.app.test", "127.0.0.2")
        found, _ = yield lookup(self.resolver(), DnsEntry("s", SRV, SRV_NAME))
        self.assertEqual([f.target for f in found], ["b1.app.test"])

    @defer.inlineCallbacks
    def test_a_and_aaaa_records(self):  # type: ignore[no-untyped-def]
        self.zone.ttl = 7
        self.zone.a("app.test", "127.0.0.3", "127.0.0.2")
        self.zone.aaaa("app.test", "::1")
        found, ttl = yield lookup(self.resolver(), DnsEntry("d", ADDRESS, "app.test", 8000))
        self.assertEqual([f.address for f in found], ["127.0.0.2", "127.0.0.3", "::1"])
        self.assertEqual({f.port for f in found}, {8000})
        self.assertEqual(ttl, 7.0)

    @defer.inlineCallbacks
    def test_no_such_name_is_an_empty_answer_a_server_failure_is_a_failure(self):  # type: ignore[no-untyped-def]
        found, _ = yield lookup(self.resolver(), DnsEntry("d", ADDRESS, "nothing.test", 80))
        self.assertEqual(found, ())
        self.zone.a("app.test", "127.0.0.2")
        self.zone.failing = True
        with self.assertRaises(Exception) as caught:
            yield lookup(self.resolver(), DnsEntry("d", ADDRESS, "app.test", 80))
        self.assertIn("DNSServerError", repr(caught.exception))
        # Both queries (A, AAAA) reached the server, which logs each failure.
        yield wait_until(lambda: len([q for q in self.zone.queries if q[0] == "app.test"]) == 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class ProxyTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_requests_go_to_servers_found_by_srv(self):  # type: ignore[no-untyped-def]
        b1, b2 = self.backend("b1"), self.backend("b2")
        self.publish(b1, b2)
        self.start(f"dns+srv://{SRV_NAME}")
        yield wait_until(lambda: len(self.names()) == 2)
        self.assertEqual(
            self.names(),
            [f"b1.app.test:{b1.port.getHost().port}", f"b2.app.test:{b2.port.getHost().port}"],
        )
        seen = yield self.bodies(4)
        self.assertEqual(sorted(seen), [(200, "b1"), (200, "b1"), (200, "b2"), (200, "b2")])
        self.assertEqual(len(self.log.lines("2 servers found")), 1)

    @defer.inlineCallbacks
    def test_changed_records_apply_like_a_reload(self):  # type: ignore[no-untyped-def]
        b1 = self.backend("b1", held_handler)
        b2, b3 = self.backend("b2"), self.backend("b3")
        self.publish(b1, b2)
        self.start(f"dns+srv://{SRV_NAME}", "slow_start = 30s\n")
        yield wait_until(lambda: len(self.names()) == 2)
        pool = self.proxy.pools["web"]
        kept = pool.by_name[f"b2.app.test:{b2.port.getHost().port}"]
        kept.stats.failures = 7  # a mark: the same object stays
        # A request held by b1, then b1 leaves DNS and b3 arrives.
        held = self.fetch()
        yield wait_until(lambda: b1.held)
        self.publish(b2, b3)
        b3_name = f"b3.app.test:{b3.port.getHost().port}"
        yield wait_until(lambda: b3_name in self.names())
        self.assertEqual(self.names(), [f"b2.app.test:{b2.port.getHost().port}", b3_name])
        self.assertIs(pool.by_name[kept.name], kept)
        self.assertEqual(kept.stats.failures, 7)
        # The new server slow-starts.
        self.assertLess(pool.by_name[b3_name].weight, WEIGHT_SCALE)
        # The removed server finishes what it has, and gets nothing new.
        b1.held[0].callback(b"b1 finished\n")
        response = yield held
        self.assertEqual((response.status, response.body), (200, b"b1 finished\n"))
        seen = yield self.bodies(6)
        self.assertEqual({body for _, body in seen}, {"b2", "b3"})
        self.assertEqual(len(b1.seen), 1)
        events = [(e.server, e.event) for e in pool.stats.events.between(0, 1e12)]
        self.assertIn((b3_name, "added"), events)
        self.assertIn((f"b1.app.test:{b1.port.getHost().port}", "removed"), events)

    @defer.inlineCallbacks
    def test_records_that_disappear_leave_a_503(self):  # type: ignore[no-untyped-def]
        b1 = self.backend("b1")
        self.publish(b1)
        self.start(f"dns+srv://{SRV_NAME}")
        yield wait_until(lambda: len(self.names()) == 1)
        self.zone.remove(SRV_NAME)
        yield wait_until(lambda: self.names() == [])
        response = yield self.fetch()
        self.assertEqual(response.status, 503)
        self.assertEqual(len(self.log.lines("DNS names no server")), 1)
        self.assertEqual(len(self.log.lines("pool web has no server: requests get 503")), 1)

    @defer.inlineCallbacks
    def test_a_silent_server_keeps_the_last_answer_logged_once(self):  # type: ignore[no-untyped-def]
        b1 = self.backend("b1")
        self.publish(b1)
        self.start(f"dns+srv://{SRV_NAME}", "dns_max_ttl = 200ms\n")
        yield wait_until(lambda: len(self.names()) == 1)
        self.zone.silent = True
        # Lookups time out (1 s per query here) and are tried again.
        yield wait_until(lambda: self.log.lines("cannot resolve"))
        queries = len(self.zone.queries)
        yield wait_until(lambda: len(self.zone.queries) >= queries + 2)
        self.assertEqual(
            self.log.lines("cannot resolve"),
            [
                f"pool web: cannot resolve dns+srv://{SRV_NAME}: no answer in time; "
                f"keeping the 1 server of its last answer (retrying)"
            ],
        )
        seen = yield self.bodies(2)
        self.assertEqual(seen, [(200, "b1"), (200, "b1")])
        self.zone.silent = False
        yield wait_until(lambda: self.log.lines("resolves again"))
        self.assertEqual(len(self.log.lines("resolves again")), 1)
        self.assertEqual(len(self.log.lines("cannot resolve")), 1)

    @defer.inlineCallbacks
    def test_a_name_that_never_resolved_leaves_the_pool_empty(self):  # type: ignore[no-untyped-def]
        self.zone.silent = True
        self.start(f"dns+srv://{SRV_NAME}")
        yield wait_until(lambda: self.log.lines("cannot resolve"))
        self.assertIn(
            "no servers from it until it resolves; pool web has no server: requests get 503",
            self.log.lines("cannot resolve")[0],
        )
        response = yield self.fetch()
        self.assertEqual(response.status, 503)
        # It resolves at last: the pool fills.
        b1 = self.backend("b1")
        self.publish(b1)
        self.zone.silent = False
        yield wait_until(lambda: len(self.names()) == 1)
        seen = yield self.bodies(1)
        self.assertEqual(seen, [(200, "b1")])

    @defer.inlineCallbacks
    def test_a_records_one_server_per_address_beside_listed_servers(self):  # type: ignore[no-untyped-def]
        # Two backends on one port, on 127.0.0.2 and 127.0.0.3.
        two = self.backend_on("127.0.0.2", "two", 0)
        port = two.port.getHost().port
        three = self.backend_on("127.0.0.3", "three", port)
        fixed = self.backend("fixed")
        self.zone.a("app.test", "127.0.0.2", "127.0.0.3")
        self.start(f"{fixed.url}\ndns://app.test:{port}")
        yield wait_until(lambda: len(self.names()) == 3)
        self.assertEqual(
            self.names(),
            sorted(
                [f"127.0.0.1:{fixed.port.getHost().port}", f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
            ),
        )
        seen = yield self.bodies(3)
        self.assertEqual(sorted(b for _, b in seen), ["fixed", "three", "two"])
        self.assertTrue(three.seen)

    def backend_on(self, host: str, name: str, port: int) -> Backend:
        backend = Backend(name, default_handler)
        backend.port.stopListening()
        backend.port = reactor.listenTCP(port, backend.site, interface=host)
        backend.url = f"http://{host}:{backend.port.getHost().port}"
        self.addCleanup(backend.stop)
        return backend

    @defer.inlineCallbacks
    def test_priorities_are_backup_tiers(self):  # type: ignore[no-untyped-def]
        b1, b2 = self.backend("b1"), self.backend("b2")
        self.zone.a("b1.app.test", "127.0.0.1")
        self.zone.a("b2.app.test", "127.0.0.1")
        self.zone.srv(
            SRV_NAME,
            (10, 1, b1.port.getHost().port, "b1.app.test"),
            (20, 1, b2.port.getHost().port, "b2.app.test"),
        )
        self.start(f"dns+srv://{SRV_NAME}")
        yield wait_until(lambda: len(self.names()) == 2)
        seen = yield self.bodies(3)
        self.assertEqual({b for _, b in seen}, {"b1"})
        pool = self.proxy.pools["web"]
        pool.drain(pool.by_name[f"b1.app.test:{b1.port.getHost().port}"])
        seen = yield self.bodies(2)
        self.assertEqual({b for _, b in seen}, {"b2"})

    @defer.inlineCallbacks
    def test_health_checks_cover_discovered_servers(self):  # type: ignore[no-untyped-def]
        def sick(backend: Backend, request: server.Request, body: bytes) -> bytes:
            request.setResponseCode(500 if request.uri == b"/healthz" else 200)
            return b"b2\n"

        b1, b2 = self.backend("b1"), self.backend("b2", sick)
        self.publish(b1, b2)
        self.start(
            f"dns+srv://{SRV_NAME}",
            "health_check = GET /healthz\nhealth_interval = 100ms\nhealth_fall = 2\n",
        )
        name = f"b2.app.test:{b2.port.getHost().port}"
        yield wait_until(lambda: name in self.names())
        pool = self.proxy.pools["web"]
        yield wait_until(lambda: pool.by_name[name].state == "DOWN")
        seen = yield self.bodies(3)
        self.assertEqual({b for _, b in seen}, {"b1"})

    @defer.inlineCallbacks
    def test_a_reload_keeps_the_discovered_servers(self):  # type: ignore[no-untyped-def]
        from lbproxy import config

        b1 = self.backend("b1")
        self.publish(b1)
        proxy = self.start(f"dns+srv://{SRV_NAME}")
        yield wait_until(lambda: len(self.names()) == 1)
        state = proxy.pools["web"].servers[0]
        new = config.parse(
            f"[proxy]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"resolver = {self.dns.address[0]}:{self.dns.address[1]}\n"
            f"[pool:web]\nalgorithm = round_robin\ndns_min_ttl = 100ms\nmax_fails = 5\n"
            f"servers = dns+srv://{SRV_NAME} max_connections=10\n",
            "test.ini",
        )
        proxy.reload(new)
        self.assertIs(proxy.pools["web"].servers[0], state)
        self.assertEqual(state.config.max_connections, 10)
        queries = len(self.zone.queries)
        yield wait_until(lambda: len(self.zone.queries) > queries)
        self.assertIs(proxy.pools["web"].servers[0], state)
