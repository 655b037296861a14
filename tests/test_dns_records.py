"""
DNS entries in the configuration, and the pure rules from what DNS names to
the servers of a pool (lbproxy.config.dns).
"""

from __future__ import annotations

from typing import List

from twisted.trial import unittest

from lbproxy.config import ConfigError, ServerConfig, parse
from lbproxy.config.dns import (
    ADDRESS,
    MAX_SERVERS,
    SRV,
    DnsEntry,
    Found,
    parse_resolver,
    preferred_address,
    resolv_conf_nameservers,
)
from lbproxy.config.found import all_servers, describe_change, servers_from


def pool_text(servers: str, extra: str = "", proxy: str = "") -> str:
    return f"[proxy]\nlisten = tcp:1\n{proxy}[pool:web]\n{extra}servers =\n" + "".join(
        f"    {line}\n" for line in servers.strip().splitlines()
    )


def error(text: str) -> str:
    try:
        parse(text, "t.ini")
    except ConfigError as e:
        return str(e)
    raise AssertionError("no error")


class EntryParsingTests(unittest.TestCase):
    def test_srv_and_address_entries_with_options(self) -> None:
        config = parse(
            pool_text(
                "http://10.0.0.1:80\n"
                "dns+srv://_http._tcp.App.Service.Consul. max_connections=50\n"
                "dns://app.internal:8000 weight=3 backup\n"
                "dns://plain.internal"
            ),
            "t.ini",
        )
        pool = config.pools["web"]
        self.assertEqual([s.name for s in pool.servers], ["10.0.0.1:80"])
        self.assertEqual(
            pool.discovery,
            (
                DnsEntry(
                    "dns+srv://_http._tcp.app.service.consul",
                    SRV,
                    "_http._tcp.app.service.consul",
                    0,
                    None,
                    50,
                    False,
                ),
                DnsEntry("dns://app.internal:8000", ADDRESS, "app.internal", 8000, 3, None, True),
                DnsEntry("dns://plain.internal:80", ADDRESS, "plain.internal", 80),
            ),
        )
        self.assertEqual((pool.dns_min_ttl, pool.dns_max_ttl), (1.0, 60.0))
        self.assertIsNone(config.resolver)
        self.assertEqual(
            config.summary(),
            "t.ini: ok: 1 listener, 1 pool, 1 server and 3 DNS names; requests go to pool 'web'",
        )

    def test_a_pool_may_have_only_dns_entries(self) -> None:
        pool = parse(pool_text("dns+srv://_http._tcp.app.test"), "t.ini").pools["web"]
        self.assertEqual(pool.servers, ())
        self.assertEqual(len(pool.discovery), 1)

    def test_bad_entries_are_one_line_errors(self) -> None:
        where = "t.ini: [pool:web] servers: line 1: "
        for line, expected in [
            ("dns+srv://_http._tcp.app:80", "SRV records carry the port: write no port"),
            ("dns://app.internal:0", "the port must be a number from 1 to 65535"),
            ("dns://app.internal:x", "the port must be a number from 1 to 65535"),
            ("dns://10.0.0.5:80", "an address needs no DNS: write http://10.0.0.5:80"),
            ("dns://app..internal", "'app..internal' is not a DNS name"),
            ("dns://app.internal/x", "no path"),
            ("dns://-bad.internal", "is not a DNS name"),
            ("dns://app.internal name=x", "option 'name' cannot be given to a DNS entry"),
            ("dns://app.internal weight=0", "weight must be a whole number from 1 to 1000"),
            ("dns://app.internal max=1", "unknown option 'max'"),
            ("dns+srv://", "'' is not a DNS name"),
        ]:
            message = error(pool_text(line + "\nhttp://10.0.0.1"))
            self.assertTrue(message.startswith(where + repr(line.split()[0])), message)
            self.assertIn(expected, message)

    def test_rules_across_lines(self) -> None:
        self.assertEqual(
            error(pool_text("dns://a.test\ndns://A.test.:80")),
            "t.ini: [pool:web] servers: line 2: 'dns://a.test:80' is already listed on line 1",
        )
        self.assertEqual(
            error(pool_text("dns://a.test weight=2", "algorithm = round_robin\n")),
            "t.ini: [pool:web] servers: line 1: weight=2 has no effect with "
            "algorithm = round_robin (use weighted_round_robin)",
        )
        self.assertEqual(
            error(pool_text("http://10.0.0.1 backup\ndns://a.test backup")),
            "t.ini: [pool:web] servers: every server is a backup: at least one must not be",
        )
        # A DNS entry that is not a backup is enough.
        parse(pool_text("http://10.0.0.1 backup\ndns+srv://_h._tcp.a.test"))
        self.assertEqual(
            error(pool_text("dns://a.test", "dns_min_ttl = 2m\n")),
            "t.ini: [pool:web] dns_min_ttl: must not be longer than dns_max_ttl (60s)",
        )
        pool = parse(pool_text("dns://a.test", "dns_min_ttl = 100ms\ndns_max_ttl = 5m\n"))
        self.assertEqual(
            (pool.pools["web"].dns_min_ttl, pool.pools["web"].dns_max_ttl), (0.1, 300.0)
        )

    def test_resolver_key(self) -> None:
        def resolver(value: str) -> object:
            return parse(pool_text("dns://a.test", proxy=f"resolver = {value}\n")).resolver

        self.assertIsNone(resolver("system"))
        self.assertEqual(
            resolver("127.0.0.1:8600 10.0.0.2 [::1]:5353 [fd00::2] ::1"),
            (
                ("127.0.0.1", 8600),
                ("10.0.0.2", 53),
                ("::1", 5353),
                ("fd00::2", 53),
                ("::1", 53),
            ),
        )
        message = error(pool_text("dns://a.test", proxy="resolver = ns1.example.com\n"))
        self.assertEqual(
            message,
            "t.ini: [proxy] resolver: 'ns1.example.com' is not an IP address with an optional "
            "port (such as 127.0.0.1:8600 or [::1]:53; names cannot be used here)",
        )
        self.assertIn(
            "the port must be", error(pool_text("dns://a", proxy="resolver = 1.2.3.4:0\n"))
        )
        with self.assertRaises(ValueError):
            parse_resolver(" ".join(["10.0.0.1"] * 9))

    def test_resolv_conf(self) -> None:
        self.assertEqual(
            resolv_conf_nameservers(
                "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver ::1\n"
                "nameserver bogus\noptions ndots:2\n"
            ),
            [("10.0.0.2", 53), ("::1", 53)],
        )
        self.assertEqual(resolv_conf_nameservers(""), [("127.0.0.1", 53)])


SRV_ENTRY = DnsEntry("dns+srv://_http._tcp.app.test", SRV, "_http._tcp.app.test")
A_ENTRY = DnsEntry("dns://app.test:8000", ADDRESS, "app.test", 8000)


class ServersFromTests(unittest.TestCase):
    def test_srv_priority_gives_the_backup_tier_and_weights(self) -> None:
        found = [
            Found(20, "c.app.test", 8002, "10.0.0.3", 5),
            Found(10, "a.app.test", 8000, "10.0.0.1", 3),
            Found(10, "b.app.test", 8001, "10.0.0.2", 0),
            Found(10, "big.app.test", 8003, "10.0.0.4", 65535),
        ]
        servers = servers_from(SRV_ENTRY, found, weighted=True)
        self.assertEqual(
            [(s.name, s.url, s.weight, s.backup) for s in servers],
            [
                ("a.app.test:8000", "http://10.0.0.1:8000", 3, False),
                ("b.app.test:8001", "http://10.0.0.2:8001", 1, False),
                ("big.app.test:8003", "http://10.0.0.4:8003", 1000, False),
                ("c.app.test:8002", "http://10.0.0.3:8002", 5, True),
            ],
        )
        unweighted = servers_from(SRV_ENTRY, found, weighted=False)
        self.assertEqual({s.weight for s in unweighted}, {1})

    def test_entry_options_apply_to_each_server(self) -> None:
        entry = DnsEntry(SRV_ENTRY.source, SRV, SRV_ENTRY.name, 0, 7, 20, True)
        servers = servers_from(entry, [Found(1, "a.test", 80, "10.0.0.1", 3)], weighted=True)
        self.assertEqual(
            servers,
            [
                ServerConfig(
                    url="http://10.0.0.1:80",
                    scheme="http",
                    host="10.0.0.1",
                    port=80,
                    weight=7,
                    name="a.test:80",
                    max_connections=20,
                    backup=True,
                )
            ],
        )

    def test_addresses_name_their_servers(self) -> None:
        found = [Found(0, None, 8000, "fd00::1"), Found(0, None, 8000, "10.0.0.9")]
        servers = servers_from(A_ENTRY, found, weighted=True)
        self.assertEqual(
            [(s.name, s.url, s.host) for s in servers],
            [
                ("10.0.0.9:8000", "http://10.0.0.9:8000", "10.0.0.9"),
                ("[fd00::1]:8000", "http://[fd00::1]:8000", "fd00::1"),
            ],
        )

    def test_at_most_max_servers_per_entry(self) -> None:
        found = [Found(0, None, 80, f"10.0.{i // 250}.{i % 250}") for i in range(MAX_SERVERS + 10)]
        self.assertEqual(len(servers_from(A_ENTRY, found, weighted=True)), MAX_SERVERS)

    def test_the_first_address_is_stable(self) -> None:
        self.assertEqual(preferred_address(["fd00::1", "10.0.0.10", "10.0.0.9"]), "10.0.0.9")
        self.assertEqual(preferred_address(["fd00::2", "fd00::1"]), "fd00::1")

    def test_listed_servers_come_first_and_win_a_clash(self) -> None:
        config = parse(
            pool_text("http://10.0.0.1:8000\ndns://app.test:8000\ndns://other.test:8000")
        ).pools["web"]
        answers = {
            "dns://app.test:8000": (
                Found(0, None, 8000, "10.0.0.1"),
                Found(0, None, 8000, "10.0.0.2"),
            ),
            "dns://other.test:8000": (
                Found(0, None, 8000, "10.0.0.2"),
                Found(0, None, 8000, "10.0.0.3"),
            ),
        }
        names: List[str] = [s.name for s in all_servers(config, answers)]
        self.assertEqual(names, ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"])
        self.assertEqual([s.name for s in all_servers(config, {})], ["10.0.0.1:8000"])

    def test_describe_change(self) -> None:
        before = [Found(0, None, 80, "10.0.0.1"), Found(0, None, 80, "10.0.0.2")]
        after = [Found(0, None, 80, "10.0.0.2"), Found(0, None, 80, "10.0.0.3")]
        self.assertEqual(
            describe_change(A_ENTRY, before, after), "added 10.0.0.3:80; removed 10.0.0.1:80"
        )
        moved = [Found(0, "a.test", 80, "10.0.0.1")], [Found(0, "a.test", 80, "10.0.0.5")]
        self.assertEqual(describe_change(SRV_ENTRY, *moved), "changed a.test:80")
