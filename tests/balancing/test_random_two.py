"""
random_two: the lighter of two random draws, repeatable with a seed.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial import unittest

from lbproxy.balancing import BalancerOptions
from lbproxy.balancing.random_two import RandomTwo

from . import S, options, order, picks


class RandomTwoTests(unittest.TestCase):
    def test_of_two_the_one_with_fewer_in_flight(self) -> None:
        # With two servers both are always drawn: the lighter always wins.
        for busy, idle in ((5, 0), (1, 0), (3, 2)):
            balancer = RandomTwo([S("a", active=busy), S("b", active=idle)], options())
            self.assertEqual(picks(balancer, 10), " ".join(["b"] * 10))

    def test_relative_to_weight(self) -> None:
        # 3 in flight at weight 4 is lighter than 1 at weight 1.
        balancer = RandomTwo([S("a", weight=4, active=3), S("b", active=1)], options())
        self.assertEqual(picks(balancer, 5), "a a a a a")

    def test_the_busiest_server_is_never_the_pick_of_three(self) -> None:
        servers = [S("a", active=9), S("b", active=1), S("c", active=2)]
        balancer = RandomTwo(servers, options(seed=7))
        counts = Counter(picks(balancer, 300).split())
        self.assertEqual(counts["a"], 0)
        # b wins every draw it is in (2 of 3 pairs), c only the pair (a, c).
        self.assertTrue(170 < counts["b"] < 230, counts)

    def test_same_seed_same_sequence(self) -> None:
        def sequence(seed: int) -> str:
            servers = [S(n) for n in "abcde"]
            return picks(RandomTwo(servers, BalancerOptions(random=random.Random(seed))), 30)

        self.assertEqual(sequence(3), sequence(3))
        self.assertNotEqual(sequence(3), sequence(4))

    def test_failover_offers_every_usable_server_once(self) -> None:
        servers = [S("a"), S("b", usable=False), S("c"), S("d", active=4)]
        balancer = RandomTwo(servers, options())
        for _ in range(20):
            self.assertEqual(sorted(order(balancer.candidates(None, 0.0)).split()), ["a", "c", "d"])

    def test_one_usable_server_and_none(self) -> None:
        balancer = RandomTwo([S("a", usable=False), S("b")], options())
        self.assertEqual(order(balancer.candidates(None, 0.0)), "b")
        balancer = RandomTwo([S("a", usable=False)], options())
        self.assertEqual(order(balancer.candidates(None, 0.0)), "")

    def test_spreads_load_evenly(self) -> None:
        # Requests arrive and stay in flight: the counts stay within one.
        servers = [S(n) for n in "abcdef"]
        balancer = RandomTwo(servers, options(seed=11))
        for _ in range(600):
            next(balancer.candidates(None, 0.0)).active += 1
        counts = sorted(s.active for s in servers)
        self.assertLessEqual(counts[-1] - counts[0], 2, counts)
