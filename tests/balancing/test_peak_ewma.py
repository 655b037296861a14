"""
peak_ewma: the latency estimate (peak, decay) with a fake clock, and the pick.
"""

from __future__ import annotations

import math
from collections import Counter

from twisted.trial import unittest

from lbproxy.balancing.peak_ewma import PENALTY, PeakEwma

from . import S, options, picks


def ewma(*servers: S, decay: float = 10.0) -> PeakEwma:
    return PeakEwma(list(servers), options(ewma_decay=decay))


class CostTests(unittest.TestCase):
    def test_a_slower_observation_is_taken_at_once(self) -> None:
        a = S("a")
        balancer = ewma(a)
        balancer.observe(a, 0.1, now=0.0)
        balancer.observe(a, 0.5, now=0.001)
        self.assertEqual(balancer.cost(0, 0.001), 0.5)

    def test_faster_observations_are_averaged_by_elapsed_time(self) -> None:
        a = S("a")
        balancer = ewma(a, decay=10.0)
        balancer.observe(a, 1.0, now=0.0)
        # 10 s later (one time constant) a 0 s response: weight e^-1 on the old.
        balancer.observe(a, 0.0, now=10.0)
        self.assertAlmostEqual(balancer.cost(0, 10.0), math.exp(-1))
        # Observations close together barely move it.
        balancer.observe(a, 0.0, now=10.0)
        self.assertAlmostEqual(balancer.cost(0, 10.0), math.exp(-1))

    def test_the_cost_decays_between_observations(self) -> None:
        a = S("a")
        balancer = ewma(a, decay=2.0)
        balancer.observe(a, 0.8, now=100.0)
        table = [(100.0, 0.8), (102.0, 0.8 * math.exp(-1)), (106.0, 0.8 * math.exp(-3))]
        for now, expected in table:
            self.assertAlmostEqual(balancer.cost(0, now), expected)

    def test_load_is_cost_times_requests_it_would_have(self) -> None:
        a = S("a", active=3)
        balancer = ewma(a)
        balancer.observe(a, 0.2, now=0.0)
        self.assertAlmostEqual(balancer.load(0, 0.0), 0.8)

    def test_unmeasured_server_takes_one_request_at_a_time(self) -> None:
        a = S("a")
        balancer = ewma(a)
        self.assertEqual(balancer.load(0, 0.0), 0.0)
        a.active = 1
        self.assertEqual(balancer.load(0, 0.0), PENALTY)

    def test_unknown_server_is_ignored(self) -> None:
        balancer = ewma(S("a"))
        balancer.observe(S("gone"), 1.0, now=0.0)
        self.assertEqual(balancer.cost(0, 0.0), 0.0)


class PickTests(unittest.TestCase):
    def test_the_faster_server_wins(self) -> None:
        fast, slow = S("fast"), S("slow")
        balancer = ewma(fast, slow)
        balancer.observe(fast, 0.01, now=0.0)
        balancer.observe(slow, 0.5, now=0.0)
        self.assertEqual(picks(balancer, 5, now=0.0), "fast fast fast fast fast")

    def test_requests_in_flight_weigh_in(self) -> None:
        # 0.01 s with 99 in flight (cost 1.0) is worse than 0.1 s idle.
        fast, slow = S("fast", active=99), S("slow")
        balancer = ewma(fast, slow)
        balancer.observe(fast, 0.01, now=0.0)
        balancer.observe(slow, 0.1, now=0.0)
        self.assertEqual(picks(balancer, 3, now=0.0), "slow slow slow")

    def test_a_slow_server_gets_tried_again_as_its_peak_fades(self) -> None:
        fast, slow = S("fast", active=1), S("slow")
        balancer = ewma(fast, slow, decay=1.0)
        balancer.observe(fast, 0.05, now=0.0)
        balancer.observe(slow, 2.0, now=0.0)
        # fast: 0.05 * 2 in flight = 0.1 against slow's 2.0.
        self.assertEqual(picks(balancer, 1, now=0.0), "fast")
        # 4 time constants later slow's 2.0 has faded to 0.037, while fast,
        # measured again, still costs 0.1.
        balancer.observe(fast, 0.05, now=4.0)
        self.assertEqual(picks(balancer, 1, now=4.0), "slow")

    def test_slow_server_gets_a_small_share_of_three(self) -> None:
        servers = [S("a"), S("b"), S("slow")]
        balancer = ewma(*servers)
        for server, latency in zip(servers, (0.01, 0.012, 0.3)):
            balancer.observe(server, latency, now=0.0)
        counts = Counter(picks(balancer, 300, now=0.0).split())
        self.assertEqual(counts["slow"], 0)
