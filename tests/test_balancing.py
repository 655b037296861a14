"""
The balancing algorithms: exact sequences, weights, ties, failover order.
"""

from __future__ import annotations

from collections import Counter
from typing import List

from twisted.trial import unittest

from lbproxy.balancing import (
    ALGORITHMS,
    LeastConnections,
    RoundRobin,
    SmoothWeightedRoundRobin,
    make_balancer,
)


class S:
    def __init__(self, name: str, weight: int = 1, active: int = 0, usable: bool = True) -> None:
        self.name = name
        self.weight = weight
        self.active = active
        self.usable = usable

    def __repr__(self) -> str:
        return self.name


def picks(balancer, n: int) -> str:  # type: ignore[no-untyped-def]
    return " ".join(next(balancer.candidates()).name for _ in range(n))


class RoundRobinTests(unittest.TestCase):
    def test_strict_cycle(self) -> None:
        rr = RoundRobin([S("a"), S("b"), S("c")])
        self.assertEqual(picks(rr, 7), "a b c a b c a")

    def test_candidates_follow_the_pick_for_failover(self) -> None:
        rr = RoundRobin([S("a"), S("b"), S("c")])
        next(rr.candidates())
        self.assertEqual([s.name for s in rr.candidates()], ["b", "c", "a"])

    def test_unusable_server_skipped_without_doubling_its_neighbour(self) -> None:
        servers = [S("a"), S("b", usable=False), S("c")]
        rr = RoundRobin(servers)
        self.assertEqual(picks(rr, 6), "a c a c a c")

    def test_no_usable_server_gives_no_candidate(self) -> None:
        rr = RoundRobin([S("a", usable=False)])
        self.assertEqual(list(rr.candidates()), [])

    def test_unread_candidates_do_not_move_the_cycle(self) -> None:
        rr = RoundRobin([S("a"), S("b")])
        rr.candidates()  # never iterated: no pick was taken
        self.assertEqual(picks(rr, 2), "a b")


class SmoothWeightedRoundRobinTests(unittest.TestCase):
    def test_nginx_sequence_5_1_1(self) -> None:
        swrr = SmoothWeightedRoundRobin([S("a", 5), S("b", 1), S("c", 1)])
        self.assertEqual(picks(swrr, 14), "a a b a c a a a a b a c a a")

    def test_equal_weights_are_a_strict_cycle(self) -> None:
        swrr = SmoothWeightedRoundRobin([S("a"), S("b"), S("c")])
        self.assertEqual(picks(swrr, 6), "a b c a b c")

    def test_shares_follow_weights(self) -> None:
        swrr = SmoothWeightedRoundRobin([S("a", 3), S("b", 2), S("c", 1)])
        counts = Counter(next(swrr.candidates()).name for _ in range(600))
        self.assertEqual(counts, {"a": 300, "b": 200, "c": 100})

    def test_no_bursts(self) -> None:
        swrr = SmoothWeightedRoundRobin([S("a", 2), S("b", 1), S("c", 1)])
        sequence = picks(swrr, 8).split()
        for first, second in zip(sequence, sequence[1:]):
            self.assertFalse(first == second == "b" or first == second == "c")
        self.assertNotIn("a a a", " ".join(sequence))

    def test_failover_offers_every_usable_server_once(self) -> None:
        servers = [S("a", 5), S("b", 1), S("c", 1), S("d", 1, usable=False)]
        swrr = SmoothWeightedRoundRobin(servers)
        for _ in range(10):
            order = [s.name for s in swrr.candidates()]
            self.assertEqual(sorted(order), ["a", "b", "c"])

    def test_unusable_server_gets_nothing(self) -> None:
        swrr = SmoothWeightedRoundRobin([S("a", 2), S("b", 1, usable=False)])
        self.assertEqual(picks(swrr, 3), "a a a")


class LeastConnectionsTests(unittest.TestCase):
    def test_fewest_in_flight_wins(self) -> None:
        servers = [S("a", active=3), S("b", active=1), S("c", active=2)]
        lc = LeastConnections(servers)
        self.assertEqual([s.name for s in lc.candidates()], ["b", "c", "a"])

    def test_relative_to_weight(self) -> None:
        # a: 4 in flight at weight 4 (1 per weight), b: 2 at weight 1 (2 per weight).
        lc = LeastConnections([S("a", weight=4, active=4), S("b", weight=1, active=2)])
        self.assertEqual(next(lc.candidates()).name, "a")
        # 5/4 < 2/1 still; 9/4 > 2/1
        lc2 = LeastConnections([S("a", weight=4, active=9), S("b", weight=1, active=2)])
        self.assertEqual(next(lc2.candidates()).name, "b")

    def test_ties_rotate_round_robin(self) -> None:
        lc = LeastConnections([S("a"), S("b"), S("c")])
        self.assertEqual(picks(lc, 5), "a b c a b")

    def test_follows_counts_as_they_change(self) -> None:
        servers = [S("a"), S("b"), S("c")]
        lc = LeastConnections(servers)
        taken: List[str] = []
        for _ in range(6):
            s = next(lc.candidates())
            s.active += 1
            taken.append(s.name)
        self.assertEqual(taken, ["a", "b", "c", "a", "b", "c"])
        servers[1].active = 0
        self.assertEqual(next(lc.candidates()).name, "b")

    def test_unusable_skipped(self) -> None:
        lc = LeastConnections([S("a", usable=False), S("b", active=5)])
        self.assertEqual([s.name for s in lc.candidates()], ["b"])


class RegistryTests(unittest.TestCase):
    def test_every_name_builds_its_algorithm(self) -> None:
        for name in ALGORITHMS:
            self.assertEqual(make_balancer(name, [S("a")]).name, name)

    def test_unknown_name(self) -> None:
        self.assertRaises(ValueError, make_balancer, "random", [S("a")])
