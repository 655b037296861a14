"""
round_robin: exact cycles, skips, failover order.
"""

from __future__ import annotations

from twisted.trial import unittest

from lbproxy.balancing.round_robin import RoundRobin

from . import S, options, order, picks


def rr(*servers: S) -> RoundRobin:
    return RoundRobin(list(servers), options())


class RoundRobinTests(unittest.TestCase):
    def test_strict_cycle(self) -> None:
        self.assertEqual(picks(rr(S("a"), S("b"), S("c")), 7), "a b c a b c a")

    def test_candidates_follow_the_pick_for_failover(self) -> None:
        balancer = rr(S("a"), S("b"), S("c"))
        next(balancer.candidates(None, 0.0))
        self.assertEqual(order(balancer.candidates(None, 0.0)), "b c a")

    def test_unusable_server_skipped_without_doubling_its_neighbour(self) -> None:
        balancer = rr(S("a"), S("b", usable=False), S("c"))
        self.assertEqual(picks(balancer, 6), "a c a c a c")

    def test_no_usable_server_gives_no_candidate(self) -> None:
        self.assertEqual(list(rr(S("a", usable=False)).candidates(None, 0.0)), [])

    def test_unread_candidates_do_not_move_the_cycle(self) -> None:
        balancer = rr(S("a"), S("b"))
        balancer.candidates(None, 0.0)  # never iterated: no pick was taken
        self.assertEqual(picks(balancer, 2), "a b")
