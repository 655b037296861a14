"""
How the pool hands the balancers what they need: keys, the clock, latency
feedback, and the sticky cookie's server across tiers.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.trial import unittest

from lbproxy.balancing.sticky import sticky_token
from lbproxy.config import parse
from lbproxy.upstream.pool import Pool, ServerState

CONFIG = """
[proxy]
listen = tcp:0
[pool:p]
algorithm = {algorithm}
{extra}
servers =
    http://127.0.0.1:1 name=a
    http://127.0.0.1:2 name=b
    http://127.0.0.1:3 name=c backup
"""


def make_pool(algorithm: str, extra: str = "", clock: Optional[Clock] = None) -> Pool:
    config = parse(CONFIG.format(algorithm=algorithm, extra=extra), "t.ini").pools["p"]
    return Pool(config, [ServerState(s) for s in config.servers], clock or Clock())


def names(pool: Pool, **kwargs: object) -> str:
    return " ".join(s.name for s in pool.candidates(**kwargs))  # type: ignore[arg-type]


class PoolWiringTests(unittest.TestCase):
    def test_flags_follow_the_algorithm(self) -> None:
        table = [
            ("round_robin", (False, False, False)),
            ("weighted_round_robin", (True, False, False)),
            ("peak_ewma", (True, False, True)),
            ("consistent_hash", (False, True, False)),
        ]
        for algorithm, flags in table:
            pool = make_pool(algorithm)
            self.assertEqual((pool.uses_weights, pool.uses_key, pool.observes_latency), flags)

    def test_request_key_only_when_the_algorithm_hashes(self) -> None:
        def header(name: bytes) -> None:
            return None

        self.assertIsNone(make_pool("round_robin").request_key(b"10.0.0.1", header, b"/"))
        pool = make_pool("consistent_hash", "hash_key = path")
        self.assertEqual(pool.request_key(b"10.0.0.1", header, b"/x?y"), b"/x")

    def test_latency_reaches_the_balancer_with_the_pools_clock(self) -> None:
        clock = Clock()
        clock.advance(1000)
        pool = make_pool("peak_ewma", clock=clock)
        a, b = pool.by_name["a"], pool.by_name["b"]
        pool.record_latency(a, 0.5)
        pool.record_latency(b, 0.01)
        self.assertEqual(names(pool), "b a")
        # 60 s of silence at a 10 s decay: a's 0.5 s is 1.2 ms, b's 10 ms is 0.02 ms.
        clock.advance(60)
        pool.dispatch(b)  # b: 0.00002 * 2 in flight, still lighter than a
        self.assertEqual(names(pool), "b a")
        pool.record_latency(b, 0.01)  # measured again: b costs 10 ms
        self.assertEqual(names(pool), "a b")

    def test_sticky_server_goes_first_within_its_tier(self) -> None:
        pool = make_pool("round_robin", "sticky_cookie = srv")
        a, b, c = (pool.by_name[n] for n in "abc")
        cookie = [b"srv=" + sticky_token("p", "b")]
        self.assertIs(pool.sticky_server(cookie), b)
        self.assertEqual(names(pool, preferred=b), "b a")
        self.assertEqual(names(pool, preferred=b), "b a")  # the cycle did not move
        self.assertEqual(names(pool), "a b")
        # A backup's cookie does not pull requests away from the primaries.
        self.assertEqual(names(pool, preferred=c), "b a")
        # ... but wins while the primaries are out.
        pool.drain(a)
        pool.drain(b)
        self.assertEqual(names(pool, preferred=c), "c")
        # An unusable sticky server is skipped.
        pool.enable(a)
        self.assertEqual(names(pool, preferred=b), "a")

    def test_a_cookie_for_another_pool_or_no_server_is_ignored(self) -> None:
        pool = make_pool("round_robin", "sticky_cookie = srv")
        for cookie in ([b"srv=" + sticky_token("q", "a")], [b"srv=x"], None):
            self.assertIsNone(pool.sticky_server(cookie))
        self.assertIsNone(make_pool("round_robin").sticky_server([b"srv=x"]))
