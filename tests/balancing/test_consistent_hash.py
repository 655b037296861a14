"""
consistent_hash: stable keys, few moves, bounded loads.
"""

from __future__ import annotations

import math
from collections import Counter

from twisted.trial import unittest

from lbproxy.balancing.consistent_hash import ConsistentHash, hash64

from . import options, order, servers


def ring(*names: str, factor: float = 1.25) -> ConsistentHash:
    return ConsistentHash(servers(*names), options(balance_factor=factor))


def owner(balancer: ConsistentHash, key: bytes) -> str:
    return next(balancer.candidates(key, 0.0)).name


KEYS = [b"user-%d" % i for i in range(1000)]


class ConsistentHashTests(unittest.TestCase):
    def test_hash_is_stable(self) -> None:
        # Fixed values: a change of the hash would move every key after an upgrade.
        self.assertEqual(hash64(b"lbproxy"), 0xE0A16B3A670BE2FE)
        self.assertNotEqual(hash64(b"a"), hash64(b"b"))

    def test_same_key_same_server(self) -> None:
        balancer = ring("a", "b", "c")
        for key in KEYS[:50]:
            self.assertEqual(len({owner(balancer, key) for _ in range(5)}), 1)

    def test_order_of_servers_does_not_matter(self) -> None:
        one, two = ring("a", "b", "c"), ring("c", "a", "b")
        self.assertEqual([owner(one, k) for k in KEYS], [owner(two, k) for k in KEYS])

    def test_keys_spread_over_servers(self) -> None:
        balancer = ring("a", "b", "c", "d")
        counts = Counter(owner(balancer, k) for k in KEYS)
        for name in "abcd":
            self.assertTrue(150 < counts[name] < 350, counts)

    def test_a_server_going_away_moves_only_its_keys(self) -> None:
        listed = servers("a", "b", "c", "d")
        balancer = ConsistentHash(listed, options())
        before = {k: owner(balancer, k) for k in KEYS}
        listed[1].usable = False
        after = {k: owner(balancer, k) for k in KEYS}
        moved = [k for k in KEYS if before[k] != after[k]]
        self.assertEqual(sorted(moved), sorted(k for k in KEYS if before[k] == "b"))
        listed[1].usable = True
        self.assertEqual({k: owner(balancer, k) for k in KEYS}, before)

    def test_failover_offers_every_usable_server_once(self) -> None:
        listed = servers("a", "b", "c", "d")
        listed[2].usable = False
        balancer = ConsistentHash(listed, options())
        for key in KEYS[:20]:
            names = order(balancer.candidates(key, 0.0)).split()
            self.assertEqual(sorted(names), ["a", "b", "d"])
            self.assertEqual(names[0], owner(balancer, key))

    def test_requests_without_a_key_still_spread(self) -> None:
        balancer = ring("a", "b", "c")
        counts = Counter(next(balancer.candidates(None, 0.0)).name for _ in range(300))
        self.assertEqual(set(counts), {"a", "b", "c"})

    def test_no_server_above_the_factor_times_the_average(self) -> None:
        # Every request has the same key, and each stays in flight: without
        # the bound all would go to one server.
        for factor in (1.25, 1.5, 2.0):
            listed = servers("a", "b", "c", "d", "e")
            balancer = ConsistentHash(listed, options(balance_factor=factor))
            for total in range(1, 201):
                next(balancer.candidates(b"hot", 0.0)).active += 1
                bound = math.ceil(factor * total / len(listed))
                self.assertLessEqual(max(s.active for s in listed), bound, (factor, total))
            self.assertEqual(sum(s.active for s in listed), 200)

    def test_bound_counts_only_usable_servers(self) -> None:
        listed = servers("a", "b", "c")
        listed[2].usable = False
        listed[2].active = 50  # in flight on a drained server: not in the average
        balancer = ConsistentHash(listed, options(balance_factor=1.5))
        for total in range(1, 41):
            next(balancer.candidates(b"hot", 0.0)).active += 1
            self.assertLessEqual(
                max(listed[0].active, listed[1].active), math.ceil(1.5 * total / 2)
            )

    def test_hot_key_stays_home_below_the_bound(self) -> None:
        listed = servers("a", "b", "c")
        balancer = ConsistentHash(listed, options(balance_factor=2.0))
        home = owner(balancer, b"k")
        for other in listed:
            other.active = 4
        # home has 4 of 12 in flight: the bound for the 13th is ceil(2 * 13 / 3) = 9.
        self.assertEqual(owner(balancer, b"k"), home)
