"""
lbproxy.balancing.walk: the shared failover walk and the pieces the
built-in algorithms share, as tables.
"""

from __future__ import annotations

import random
from typing import AbstractSet, List, Optional, Tuple

from twisted.plugin import IPlugin
from twisted.trial import unittest
from zope.interface.verify import verifyClass, verifyObject

from lbproxy.balancing import IBalancer, IBalancerFactory
from lbproxy.balancing.walk import (
    NOTHING,
    Algorithm,
    Balancer,
    failover,
    lighter,
    two_choices,
    untried,
)

from . import S, options, order


class FailoverTests(unittest.SynchronousTestCase):
    def test_each_answer_leaves_out_the_servers_offered(self) -> None:
        servers = [S("a"), S("b"), S("c")]
        calls: List[Tuple[frozenset, str]] = []

        def pick(tried: AbstractSet[int], extra: str) -> int:
            calls.append((frozenset(tried), extra))
            left = [i for i in (2, 0, 1) if i not in tried]
            return left[0] if left else -1

        self.assertEqual(order(failover(servers, pick, "x")), "c a b")
        self.assertEqual(
            calls,
            [
                (NOTHING, "x"),
                (frozenset({2}), "x"),
                (frozenset({0, 2}), "x"),
                (frozenset({0, 1, 2}), "x"),
            ],
        )

    def test_lazy_the_algorithm_moves_only_as_far_as_read(self) -> None:
        picked: List[int] = []

        def pick(tried: AbstractSet[int]) -> int:
            picked.append(len(tried))
            return len(tried) if len(tried) < 3 else -1

        walk = failover([S("a"), S("b"), S("c")], pick)
        self.assertEqual(picked, [])
        self.assertEqual(next(walk).name, "a")
        self.assertEqual(picked, [0])

    def test_nothing_to_pick_no_candidates(self) -> None:
        self.assertEqual(list(failover([S("a")], lambda tried: -1)), [])


class SharedPiecesTests(unittest.SynchronousTestCase):
    def test_untried_usable_servers(self) -> None:
        servers = [S("a"), S("b", usable=False), S("c"), S("d")]
        # tried -> indexes left
        table = [(set(), [0, 2, 3]), ({0}, [2, 3]), ({0, 2, 3}, []), ({1}, [0, 2, 3])]
        for tried, expected in table:
            self.assertEqual(untried(servers, tried), expected, tried)

    def test_lighter_relative_to_weight(self) -> None:
        # (load_a, weight_a, load_b, weight_b) -> a is lighter
        table = [
            (1, 1, 2, 1, True),
            (2, 1, 2, 1, False),  # a tie is not lighter
            (2, 2, 3, 1, True),  # 1 per weight against 3
            (4, 2, 3, 2, False),
            (0, 1, 0, 5, False),
            (0.5, 1, 1.0, 1, True),
        ]
        for load_a, weight_a, load_b, weight_b, expected in table:
            self.assertEqual(lighter(load_a, weight_a, load_b, weight_b), expected)

    def test_two_choices_takes_the_lighter_of_two(self) -> None:
        servers = [S("a", active=5), S("b", active=0), S("c", active=5, weight=10)]

        def load(i: int) -> float:
            return float(servers[i].active)

        seen = set()
        for seed in range(20):
            rng = random.Random(seed)
            a, b = random.Random(seed).sample([0, 1, 2], 2)
            chosen = two_choices(servers, NOTHING, rng, load)
            self.assertIn(chosen, (a, b))
            other = b if chosen == a else a
            self.assertFalse(
                lighter(load(other), servers[other].weight, load(chosen), servers[chosen].weight)
            )
            seen.add(chosen)
        self.assertNotIn(0, seen)  # a is heavier than b and c whichever it is drawn with

    def test_two_choices_with_one_or_none_left(self) -> None:
        servers = [S("a"), S("b", usable=False)]
        rng = random.Random(1)
        self.assertEqual(two_choices(servers, NOTHING, rng, lambda i: 0.0), 0)
        self.assertEqual(two_choices(servers, {0}, rng, lambda i: 0.0), -1)


class First(Balancer):
    """The lowest untried usable index."""

    def pick(self, tried: AbstractSet[int], key: Optional[bytes], now: float) -> int:
        left = untried(self.servers, tried)
        return left[0] if left else -1


class BalancerTests(unittest.SynchronousTestCase):
    def test_a_pick_is_all_an_algorithm_writes(self) -> None:
        balancer = First([S("a"), S("b", usable=False), S("c")], options())
        self.assertTrue(verifyObject(IBalancer, balancer))
        self.assertEqual(order(balancer.candidates(None, 0.0)), "a c")
        balancer.observe(balancer.servers[0], 1.0, 0.0)  # no-op by default
        self.assertEqual(order(balancer.candidates(None, 0.0)), "a c")

    def test_the_base_has_no_pick(self) -> None:
        with self.assertRaises(NotImplementedError):
            list(Balancer([S("a")], options()).candidates(None, 0.0))


class AlgorithmTests(unittest.SynchronousTestCase):
    def test_a_named_builder_is_a_plugin_factory(self) -> None:
        self.assertTrue(verifyClass(IBalancerFactory, Algorithm))
        self.assertTrue(IPlugin.implementedBy(Algorithm))
        algorithm = Algorithm("first", First, summary="the first usable")
        self.assertEqual(
            (
                algorithm.uses_weights,
                algorithm.uses_key,
                algorithm.observes_latency,
                algorithm.options,
            ),
            (True, False, False, ()),
        )
        built = algorithm.build([S("a"), S("b")], options())
        self.assertIsInstance(built, First)
        self.assertEqual(order(built.candidates(None, 0.0)), "a b")
        with self.assertRaises(AttributeError):
            algorithm.name = "other"  # type: ignore[misc]
