"""
Pool state with task.Clock: health counting, passive ejection and panic mode,
backups, max_connections and its queue, slow start, draining.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from lbproxy.config import parse
from lbproxy.upstream.health import HealthChecker
from lbproxy.upstream.pool import WEIGHT_SCALE, Pool, ServerState
from tests.support import proxy_config


def make_pool(servers: List[str], clock: Clock, **options: str) -> Pool:
    config = parse(proxy_config(servers, "weighted_round_robin", pool=options)).active_pool()
    return Pool(config, [ServerState(s) for s in config.servers], clock)


def first(pool: Pool) -> str:
    return next(pool.candidates()).name


class HealthCountingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = make_pool(
            ["http://a:1 name=a", "http://b:1 name=b"],
            self.clock,
            health_check="GET /healthz",
            health_rise="2",
            health_fall="3",
            health_interval="2s",
            health_timeout="1s",
        )
        self.a, self.b = self.pool.servers

    def test_fall_then_rise_counted_exactly(self) -> None:
        pool, a = self.pool, self.a
        pool.record_check(a, False, "status 500")
        pool.record_check(a, False, "status 500")
        self.assertTrue(a.up)
        pool.record_check(a, True, "status 200")  # a success resets the fall count
        pool.record_check(a, False, "refused")
        pool.record_check(a, False, "refused")
        self.assertTrue(a.up)
        pool.record_check(a, False, "refused")
        self.assertFalse(a.up)
        self.assertFalse(a.usable)
        self.assertEqual([s.name for s in pool.candidates()], ["b"])
        pool.record_check(a, True, "status 200")
        pool.record_check(a, False, "timeout")  # a failure resets the rise count
        pool.record_check(a, True, "status 200")
        self.assertFalse(a.up)
        pool.record_check(a, True, "status 200")
        self.assertTrue(a.up)
        self.assertTrue(a.usable)

    def test_every_server_down_is_503_material(self) -> None:
        for server in self.pool.servers:
            for _ in range(3):
                self.pool.record_check(server, False, "refused")
        self.assertEqual(list(self.pool.candidates()), [])
        self.assertFalse(self.pool.can_wait())
        self.assertEqual(self.pool.retry_after(), 4)  # interval 2s x rise 2

    def test_checker_spreads_probes_and_never_piles_up(self) -> None:
        probes: List[Tuple[str, Deferred[Tuple[bool, str]]]] = []

        def probe(server: ServerState) -> Deferred[Tuple[bool, str]]:
            d: Deferred[Tuple[bool, str]] = Deferred()
            probes.append((server.name, d))
            return d

        checker = HealthChecker(self.pool, probe, self.clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        self.clock.advance(2)  # first probes fall within one interval
        self.assertEqual(sorted(name for name, _ in probes), ["a", "b"])
        self.clock.advance(0.9)  # a probe still running is not started again
        self.assertEqual(len(probes), 2)
        probes[0][1].callback((True, "status 200"))
        self.clock.advance(0.1)  # the other one times out (health_timeout 1s)
        self.assertEqual(len(probes), 2)
        timed_out = self.b if probes[0][0] == "a" else self.a
        self.assertEqual(timed_out.last_check, "no answer within 1s")
        self.clock.advance(2.2)  # next probes: one interval (+-10%) after each finished
        self.assertEqual(len(probes), 4)

    def test_checker_counts_a_server_down_and_back(self) -> None:
        answers: Dict[str, bool] = {"a": True, "b": True}

        def probe(server: ServerState) -> Deferred[Tuple[bool, str]]:
            ok = answers[server.name]
            return succeed((ok, "status 200" if ok else "status 503"))

        checker = HealthChecker(self.pool, probe, self.clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        answers["a"] = False
        for _ in range(3):
            self.clock.advance(2.2)
        self.assertFalse(self.a.up)
        answers["a"] = True
        self.clock.advance(2.2)
        self.assertFalse(self.a.up)
        self.clock.advance(2.2)
        self.assertTrue(self.a.up)


class PassiveCheckTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = make_pool(
            ["http://a:1 name=a", "http://b:1 name=b"],
            self.clock,
            max_fails="3",
            fail_timeout="10s",
        )
        self.a, self.b = self.pool.servers

    def fail(self, server: ServerState, times: int) -> None:
        for _ in range(times):
            self.pool.record_failure(server)

    def test_max_fails_within_fail_timeout_ejects(self) -> None:
        self.fail(self.a, 2)
        self.clock.advance(11)  # the window passed: counting starts again
        self.fail(self.a, 2)
        self.assertTrue(self.a.usable)
        self.fail(self.a, 1)
        self.assertFalse(self.a.usable)
        self.assertEqual([s.name for s in self.pool.candidates()], ["b"])

    def test_back_on_probation_after_fail_timeout(self) -> None:
        self.fail(self.a, 3)
        self.clock.advance(10)
        self.assertTrue(self.a.usable)
        self.pool.record_failure(self.a)  # the probing request failed
        self.assertFalse(self.a.usable)
        self.clock.advance(10)
        self.pool.record_success(self.a)  # the probing request passed
        self.fail(self.a, 2)
        self.assertTrue(self.a.usable)

    def test_panic_mode_tries_the_server_ejected_longest_ago(self) -> None:
        self.fail(self.b, 3)
        self.clock.advance(1)
        self.fail(self.a, 3)
        self.assertEqual([s.name for s in self.pool.candidates()], ["b"])
        self.assertEqual(self.pool.retry_after(), 10)

    def test_a_passing_health_check_brings_an_ejected_server_back(self) -> None:
        self.fail(self.a, 3)
        self.assertFalse(self.a.usable)
        self.pool.record_check(self.a, True, "status 200")
        self.assertTrue(self.a.usable)
        self.assertEqual(self.a.fails, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_max_fails_zero_disables(self) -> None:
        pool = make_pool(["http://a:1"], self.clock, max_fails="0")
        for _ in range(10):
            pool.record_failure(pool.servers[0])
        self.assertTrue(pool.servers[0].usable)


class TimerTests(unittest.TestCase):
    def test_reload_forgets_a_removed_servers_reinstatement_and_ramp(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a", "http://b:1 name=b"],
            clock,
            max_fails="1",
            health_check="GET /",
            health_fall="1",
            health_rise="1",
            slow_start="30s",
        )
        a, b = pool.servers
        pool.record_failure(a)  # a reinstatement pending
        pool.record_check(b, False, "refused")
        pool.record_check(b, True, "status 200")  # a ramp pending
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        pool.reconfigure(pool.config, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ejection_ends_a_ramp_and_reinstatement_starts_one(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a weight=10", "http://b:1 name=b"],
            clock,
            max_fails="1",
            fail_timeout="10s",
            health_check="GET /",
            health_fall="1",
            health_rise="1",
            slow_start="30s",
        )
        a = pool.servers[0]
        pool.record_check(a, False, "refused")
        pool.record_check(a, True, "status 200")
        clock.advance(15)
        pool.record_failure(a)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the reinstatement only
        clock.advance(10)
        self.assertTrue(a.usable)
        self.assertEqual(a.weight, 10 * WEIGHT_SCALE // 10)  # ramping again from a tenth
        pool.set_weight(a, 5)  # an operator's weight ends the ramp
        self.assertEqual(a.weight, 5 * WEIGHT_SCALE)
        self.assertEqual(clock.getDelayedCalls(), [])
        pool.stop()


class BackupTests(unittest.TestCase):
    def test_backup_only_while_every_primary_is_out(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a", "http://b:1 name=b", "http://c:1 name=c backup"],
            clock,
            health_check="GET /",
            health_fall="1",
        )
        a, b, c = pool.servers
        self.assertEqual({first(pool) for _ in range(6)}, {"a", "b"})
        pool.record_check(a, False, "refused")
        self.assertEqual({first(pool) for _ in range(4)}, {"b"})
        pool.drain(b)
        self.assertEqual([s.name for s in pool.candidates()], ["c"])
        pool.enable(b)
        self.assertEqual(first(pool), "b")


class MaxConnectionsTests(unittest.TestCase):
    def test_full_server_skipped_and_waiters_served_in_order(self) -> None:
        clock = Clock()
        pool = make_pool(["http://a:1 name=a max_connections=2"], clock)
        (a,) = pool.servers
        pool.dispatch(a)
        self.assertTrue(a.usable)
        pool.dispatch(a)
        self.assertFalse(a.usable)
        self.assertEqual(list(pool.candidates()), [])
        self.assertTrue(pool.can_wait())
        woken: List[int] = []
        pool.wait(lambda: woken.append(1))
        leave = pool.wait(lambda: woken.append(2))
        pool.wait(lambda: woken.append(3))
        leave()
        pool.release(a)
        # Everyone woken may try; the first to dispatch fills the slot again.
        self.assertEqual(woken, [1, 3])


class SlowStartTests(unittest.TestCase):
    def test_weight_ramps_from_a_tenth(self) -> None:
        clock = Clock()
        pool = make_pool(
            ["http://a:1 name=a weight=10", "http://b:1 name=b"],
            clock,
            health_check="GET /",
            health_fall="1",
            health_rise="1",
            slow_start="30s",
        )
        a = pool.servers[0]
        full = 10 * WEIGHT_SCALE
        pool.record_check(a, False, "refused")
        pool.record_check(a, True, "status 200")
        self.assertEqual(a.weight, full // 10)
        clock.advance(15)
        self.assertAlmostEqual(a.weight, int(full * 0.55), delta=full * 0.05)
        clock.advance(15)
        self.assertEqual(a.weight, full)
        self.assertEqual(clock.getDelayedCalls(), [])


class DrainTests(unittest.TestCase):
    def test_drained_server_gets_no_new_requests(self) -> None:
        pool = make_pool(["http://a:1 name=a", "http://b:1 name=b"], Clock())
        a, b = pool.servers
        pool.dispatch(a)
        pool.drain(a)
        self.assertEqual({first(pool) for _ in range(4)}, {"b"})
        pool.release(a)
        self.assertEqual(a.active, 0)
        pool.enable(a)
        self.assertEqual({first(pool) for _ in range(4)}, {"a", "b"})
