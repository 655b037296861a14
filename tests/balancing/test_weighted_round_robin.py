"""
weighted_round_robin: nginx's sequences, shares, no bursts, failover.
"""

from __future__ import annotations

from collections import Counter

from twisted.trial import unittest

from lbproxy.balancing.weighted_round_robin import SmoothWeightedRoundRobin

from . import S, options, picks


def swrr(*servers: S) -> SmoothWeightedRoundRobin:
    return SmoothWeightedRoundRobin(list(servers), options())


class SmoothWeightedRoundRobinTests(unittest.TestCase):
    def test_nginx_sequence_5_1_1(self) -> None:
        balancer = swrr(S("a", 5), S("b", 1), S("c", 1))
        self.assertEqual(picks(balancer, 14), "a a b a c a a a a b a c a a")

    def test_equal_weights_are_a_strict_cycle(self) -> None:
        self.assertEqual(picks(swrr(S("a"), S("b"), S("c")), 6), "a b c a b c")

    def test_shares_follow_weights(self) -> None:
        balancer = swrr(S("a", 3), S("b", 2), S("c", 1))
        counts = Counter(next(balancer.candidates(None, 0.0)).name for _ in range(600))
        self.assertEqual(counts, {"a": 300, "b": 200, "c": 100})

    def test_no_bursts(self) -> None:
        sequence = picks(swrr(S("a", 2), S("b", 1), S("c", 1)), 8).split()
        for first, second in zip(sequence, sequence[1:]):
            self.assertFalse(first == second == "b" or first == second == "c")
        self.assertNotIn("a a a", " ".join(sequence))

    def test_failover_offers_every_usable_server_once(self) -> None:
        balancer = swrr(S("a", 5), S("b", 1), S("c", 1), S("d", 1, usable=False))
        for _ in range(10):
            names = [s.name for s in balancer.candidates(None, 0.0)]
            self.assertEqual(sorted(names), ["a", "b", "c"])

    def test_unusable_server_gets_nothing(self) -> None:
        self.assertEqual(picks(swrr(S("a", 2), S("b", 1, usable=False)), 3), "a a a")
