"""
least_connections: fewest in flight relative to weight, ties round robin.
"""

from __future__ import annotations

from typing import List

from twisted.trial import unittest

from lbproxy.balancing.least_connections import LeastConnections

from . import S, options, order, picks


def lc(*servers: S) -> LeastConnections:
    return LeastConnections(list(servers), options())


class LeastConnectionsTests(unittest.TestCase):
    def test_fewest_in_flight_wins(self) -> None:
        balancer = lc(S("a", active=3), S("b", active=1), S("c", active=2))
        self.assertEqual(order(balancer.candidates(None, 0.0)), "b c a")

    def test_relative_to_weight(self) -> None:
        # a: 4 in flight at weight 4 (1 per weight), b: 2 at weight 1 (2 per weight).
        balancer = lc(S("a", weight=4, active=4), S("b", weight=1, active=2))
        self.assertEqual(picks(balancer, 1), "a")
        # 9/4 > 2/1
        balancer = lc(S("a", weight=4, active=9), S("b", weight=1, active=2))
        self.assertEqual(picks(balancer, 1), "b")

    def test_ties_rotate_round_robin(self) -> None:
        self.assertEqual(picks(lc(S("a"), S("b"), S("c")), 5), "a b c a b")

    def test_follows_counts_as_they_change(self) -> None:
        servers = [S("a"), S("b"), S("c")]
        balancer = lc(*servers)
        taken: List[str] = []
        for _ in range(6):
            server = next(balancer.candidates(None, 0.0))
            server.active += 1
            taken.append(server.name)
        self.assertEqual(taken, ["a", "b", "c", "a", "b", "c"])
        servers[1].active = 0
        self.assertEqual(picks(balancer, 1), "b")

    def test_unusable_skipped(self) -> None:
        balancer = lc(S("a", usable=False), S("b", active=5))
        self.assertEqual(order(balancer.candidates(None, 0.0)), "b")
