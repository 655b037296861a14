"""
lbproxy.upstream.discovered: one DNS discovery per pool with DNS lines,
started, reconfigured and stopped as configurations are applied, over a
scripted resolver and task.Clock.  Discovery's own schedule is in
L{tests.test_discovery}; real DNS over sockets in L{tests.test_discovery_dns}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.names import dns
from twisted.trial import unittest

from lbproxy.config import ProxyConfig, parse
from lbproxy.reload import server_key
from lbproxy.upstream import dnslookup
from lbproxy.upstream.discovered import DiscoveredPools
from lbproxy.upstream.discovery import Discovery
from lbproxy.upstream.pool import Pool, ServerState

Sections = Tuple[List[Any], List[Any], List[Any]]


class ScriptedResolver:
    """
    Answers A queries from a table (TTL 30 s) and AAAA queries with nothing,
    when the test says so (L{answer}): a real resolver answers later, never
    while it is asked.
    """

    def __init__(self, servers: Optional[Sequence[Tuple[str, int]]]) -> None:
        self.servers = servers
        self.table: Dict[str, List[str]] = {}
        self.asked: List[str] = []
        self.pending: List[Tuple[str, Deferred[Sections]]] = []
        self.closed = 0

    def lookupAddress(self, name: str) -> Deferred[Sections]:  # noqa: N802
        self.asked.append(name)
        asked: Deferred[Sections] = Deferred()
        self.pending.append((name, asked))
        return asked

    def lookupIPV6Address(self, name: str) -> Deferred[Sections]:  # noqa: N802
        return succeed(([], [], []))

    def answer(self) -> None:
        """Answer every query asked so far from the table."""
        pending, self.pending = self.pending, []
        for name, asked in pending:
            records = [
                dns.RRHeader(name, dns.A, ttl=30, payload=dns.Record_A(a, 30))
                for a in self.table.get(name, [])
            ]
            asked.callback((records, [], []))

    def close(self) -> None:
        self.closed += 1


def config(dyn: str = "dns://app.test:80", resolver: str = "") -> ProxyConfig:
    dyn_pool = f"[pool:dyn]\nservers = {dyn}\n[route:dyn]\npath = /dyn\npool = dyn\n" if dyn else ""
    return parse(
        "[proxy]\nlisten = tcp:1\npool = web\n"
        f"{resolver}"
        "[pool:web]\nservers = http://127.0.0.1:8001\n"
        f"{dyn_pool}",
        "t.ini",
    )


class DiscoveredPoolsTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.parent = MultiService()
        self.parent.startService()
        self.addCleanup(self.parent.stopService)
        self.made: List[ScriptedResolver] = []
        self.changed: List[str] = []
        self.table: Dict[str, List[str]] = {"app.test": ["10.0.0.1", "10.0.0.2"]}

        def make_resolver(servers: Any, reactor: Any) -> ScriptedResolver:
            self.assertIs(reactor, self.clock)
            resolver = ScriptedResolver(servers)
            resolver.table = self.table
            self.made.append(resolver)
            return resolver

        self.patch(dnslookup, "make_resolver", make_resolver)
        self.discovered = DiscoveredPools(self.parent, self.clock, server_key, self.changed.append)
        self.addCleanup(self.discovered.stop)

    def apply(self, proxy: ProxyConfig) -> Mapping[str, Pool]:
        pools = {
            name: Pool(c, [ServerState(s) for s in c.servers], self.clock)
            for name, c in proxy.pools.items()
        }
        self.discovered.apply(proxy, pools, {name: None for name in pools})
        for resolver in self.made:
            resolver.answer()
        return pools

    def test_a_discovery_per_pool_with_dns_lines_and_its_servers_in_the_pool(self) -> None:
        pools = self.apply(config())
        self.assertEqual(sorted(self.discovered.discoveries), ["dyn"])
        discovery = self.discovered.discoveries["dyn"]
        self.assertIsInstance(discovery, Discovery)
        self.assertIs(discovery.parent, self.parent)
        self.assertTrue(discovery.running)
        self.assertEqual(len(self.made), 1)
        self.assertEqual(self.made[0].asked, ["app.test"])
        self.assertEqual(
            sorted(s.config.host for s in pools["dyn"].servers), ["10.0.0.1", "10.0.0.2"]
        )
        self.assertEqual(self.changed, ["dyn"])
        self.assertEqual(
            sorted(f.address for f in self.discovered.answers("dyn")["dns://app.test:80"]),
            ["10.0.0.1", "10.0.0.2"],
        )
        self.assertEqual(self.discovered.answers("web"), {})

    def test_no_dns_lines_no_resolver(self) -> None:
        self.apply(config(dyn=""))
        self.assertEqual((self.discovered.discoveries, self.made), ({}, []))

    def test_the_records_change_the_pool_keeps_the_servers_that_stay(self) -> None:
        pools = self.apply(config())
        kept = next(s for s in pools["dyn"].servers if s.config.host == "10.0.0.2")
        self.table["app.test"] = ["10.0.0.2", "10.0.0.3"]
        self.clock.advance(30)  # the TTL
        self.made[0].answer()
        hosts = sorted(s.config.host for s in pools["dyn"].servers)
        self.assertEqual(hosts, ["10.0.0.2", "10.0.0.3"])
        self.assertIn(kept, pools["dyn"].servers)
        self.assertEqual(self.changed, ["dyn", "dyn"])

    def test_a_reload_reconfigures_the_running_discovery_with_the_same_resolver(self) -> None:
        self.apply(config())
        discovery = self.discovered.discoveries["dyn"]
        self.apply(config("dns://app.test:80 weight=2"))
        self.assertIs(self.discovered.discoveries["dyn"], discovery)
        self.assertEqual(discovery.config.discovery[0].weight, 2)
        self.assertEqual(len(self.made), 1)
        self.assertEqual(self.made[0].closed, 0)

    def test_another_resolver_setting_makes_a_new_resolver_and_closes_the_old(self) -> None:
        self.apply(config())
        self.apply(config(resolver="resolver = 127.0.0.1:8600\n"))
        self.assertEqual(len(self.made), 2)
        self.assertEqual(list(self.made[1].servers or ()), [("127.0.0.1", 8600)])
        self.assertEqual((self.made[0].closed, self.made[1].closed), (1, 0))
        self.assertIs(self.discovered.discoveries["dyn"].resolver, self.made[1])

    def test_a_pool_without_dns_lines_any_more_stops_its_discovery(self) -> None:
        self.apply(config())
        discovery = self.discovered.discoveries["dyn"]
        self.apply(config("http://127.0.0.1:8002"))
        self.assertEqual(self.discovered.discoveries, {})
        self.assertFalse(discovery.running)
        self.assertIsNone(discovery.parent)
        before = len(self.made[0].asked)
        self.clock.advance(60)
        self.assertEqual(len(self.made[0].asked), before)  # no more lookups

    def test_stop_closes_the_resolver_once(self) -> None:
        self.apply(config())
        self.discovered.stop()
        self.discovered.stop()
        self.assertEqual(self.made[0].closed, 1)
