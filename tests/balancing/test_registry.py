"""
The registry: one list of names, the shared walk, and algorithms found in
plugins (a module dropped in a folder of the lbproxy.plugins package).
"""

from __future__ import annotations

import os
import sys
import textwrap

from twisted.trial import unittest
from zope.interface.verify import verifyObject

import lbproxy.plugins
from lbproxy.balancing import (
    BUILT_IN,
    IBalancer,
    IBalancerFactory,
    failover,
    lookup,
    make_balancer,
    names,
)
from lbproxy.config import ConfigError, parse
from lbproxy.upstream.pool import Pool, ServerState

from . import S, options, order, servers

PLUGIN = '''
"""A balancing plugin: the last usable server listed first."""

from lbproxy.balancing import Algorithm, Balancer


class LastListed(Balancer):
    def pick(self, tried, key, now):
        for index in reversed(range(len(self.servers))):
            if self.servers[index].usable and index not in tried:
                return index
        return -1


last_listed = Algorithm(name="last_listed", builder=LastListed, summary="the last one first")
'''

CONFIG = """
[proxy]
listen = tcp:0
[pool:p]
algorithm = {algorithm}
servers =
    http://127.0.0.1:1 name=a
    http://127.0.0.1:2 name=b
    http://127.0.0.1:3 name=c
"""


class RegistryTests(unittest.TestCase):
    def test_builtin_names_in_documented_order(self) -> None:
        self.assertEqual(
            names(),
            (
                "round_robin",
                "weighted_round_robin",
                "least_connections",
                "random_two",
                "peak_ewma",
                "consistent_hash",
            ),
        )

    def test_every_algorithm_provides_the_interfaces(self) -> None:
        for name, algorithm in BUILT_IN.items():
            self.assertTrue(verifyObject(IBalancerFactory, algorithm))
            self.assertEqual(algorithm.name, name)
            balancer = make_balancer(name, servers("a", "b"), options())
            self.assertTrue(verifyObject(IBalancer, balancer))
            self.assertEqual(sorted(s.name for s in balancer.candidates(b"k", 0.0)), ["a", "b"])

    def test_unknown_name_lists_the_known_ones(self) -> None:
        with self.assertRaises(ValueError) as caught:
            lookup("fastest")
        self.assertEqual(
            str(caught.exception),
            "must be one of round_robin, weighted_round_robin, least_connections, "
            "random_two, peak_ewma, consistent_hash, got 'fastest'",
        )

    def test_failover_walk_is_lazy_and_offers_each_once(self) -> None:
        calls = []

        def pick(tried: set) -> int:
            calls.append(sorted(tried))
            return min(set(range(3)) - tried, default=-1)

        walk = failover(servers("a", "b", "c"), pick)
        self.assertEqual(calls, [])
        self.assertEqual(order(walk), "a b c")
        self.assertEqual(calls, [[], [0], [0, 1], [0, 1, 2]])


class PluginTests(unittest.TestCase):
    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "lbproxy_test_last_listed.py"), "w") as f:
            f.write(textwrap.dedent(PLUGIN))
        self.patch(lbproxy.plugins, "__path__", list(lbproxy.plugins.__path__) + [folder])
        self.addCleanup(sys.modules.pop, "lbproxy.plugins.lbproxy_test_last_listed", None)

    def test_a_dropped_in_module_adds_an_algorithm(self) -> None:
        self.assertEqual(names()[-1], "last_listed")
        algorithm = lookup("last_listed")
        self.assertEqual(algorithm.summary, "the last one first")
        listed = [S("a"), S("b", usable=False), S("c")]
        self.assertEqual(order(algorithm.build(listed, options()).candidates(None, 0.0)), "c a")

    def test_the_configuration_names_it_and_the_pool_uses_it(self) -> None:
        config = parse(CONFIG.format(algorithm="last_listed"), "t.ini").pools["p"]
        pool = Pool(config, [ServerState(s) for s in config.servers])
        self.assertEqual([s.name for s in pool.candidates()], ["c", "b", "a"])

    def test_without_the_plugin_the_name_is_an_error(self) -> None:
        self.patch(lbproxy.plugins, "__path__", list(lbproxy.plugins.__path__)[:-1])
        with self.assertRaises(ConfigError) as caught:
            parse(CONFIG.format(algorithm="last_listed"), "t.ini")
        self.assertIn("[pool:p] algorithm: must be one of round_robin,", str(caught.exception))


class ConfigTests(unittest.TestCase):
    def pool(self, algorithm: str, extra: str = "") -> str:
        return CONFIG.format(algorithm=algorithm) + extra

    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse(text, "t.ini")
        return str(caught.exception)

    def test_defaults(self) -> None:
        pool = parse(self.pool("round_robin"), "t.ini").pools["p"]
        self.assertEqual(
            (str(pool.hash_key), pool.hash_balance_factor, pool.ewma_decay, pool.sticky_cookie),
            ("client_address", 1.25, 10.0, None),
        )

    def test_algorithm_keys(self) -> None:
        pool = parse(
            self.pool(
                "consistent_hash",
                "hash_key = cookie:sid\nhash_balance_factor = 2\nsticky_cookie = srv\n",
            ),
            "t.ini",
        ).pools["p"]
        self.assertEqual(
            (str(pool.hash_key), pool.hash_balance_factor, pool.sticky_cookie),
            ("cookie:sid", 2.0, "srv"),
        )
        pool = parse(self.pool("peak_ewma", "ewma_decay = 500ms\n"), "t.ini").pools["p"]
        self.assertEqual(pool.ewma_decay, 0.5)

    def test_errors(self) -> None:
        table = [
            (
                self.pool("round_robin", "hash_key = path\n"),
                "t.ini: [pool:p] hash_key: has no effect with algorithm = round_robin "
                "(it is read by consistent_hash)",
            ),
            (
                self.pool("least_connections", "ewma_decay = 5s\n"),
                "t.ini: [pool:p] ewma_decay: has no effect with algorithm = least_connections "
                "(it is read by peak_ewma)",
            ),
            (
                self.pool("peak_ewma", "hash_balance_factor = 2\n"),
                "t.ini: [pool:p] hash_balance_factor: has no effect with algorithm = peak_ewma "
                "(it is read by consistent_hash)",
            ),
            (
                self.pool("consistent_hash", "hash_balance_factor = 1\n"),
                "t.ini: [pool:p] hash_balance_factor: must be a number above 1 and at most 100, "
                "such as 1.25, got '1'",
            ),
            (
                self.pool("consistent_hash", "hash_key = url\n"),
                "t.ini: [pool:p] hash_key: must be client_address, header:NAME, cookie:NAME "
                "or path, got 'url'",
            ),
            (
                self.pool("round_robin", "sticky_cookie = a b\n"),
                "t.ini: [pool:p] sticky_cookie: must be a name of letters, digits and "
                "!#$%&'*+-.^_`|~, got 'a b'",
            ),
            (
                self.pool("consistent_hash").replace("name=b", "name=b weight=2"),
                "t.ini: [pool:p] servers: line 2: weight=2 has no effect with "
                "algorithm = consistent_hash (use weighted_round_robin)",
            ),
        ]
        for text, expected in table:
            self.assertEqual(self.error(text), expected)
