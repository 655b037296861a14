"""
The rooms a pool is made of, each alone: per-server timers, the wait queue,
the rise/fall verdict, passive ejection and panic mode, slow start.  The
pool as a whole is in L{tests.test_pool}.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.internet.task import Clock
from twisted.trial import unittest

from lbproxy.config import ServerConfig, parse
from lbproxy.upstream import verdict
from lbproxy.upstream.ejection import Ejection, panic_choice
from lbproxy.upstream.queue import WaitQueue
from lbproxy.upstream.server import WEIGHT_SCALE, ServerState
from lbproxy.upstream.slowstart import SLOW_START_STEPS, SlowStart
from lbproxy.upstream.timers import ServerTimers
from tests.support import proxy_config


def server(name: str = "a", weight: int = 1) -> ServerState:
    return ServerState(ServerConfig(f"http://{name}:1", "http", name, 1, weight=weight, name=name))


class ServerTimersTests(unittest.TestCase):
    def test_one_call_per_server_keyed_by_the_server_itself(self) -> None:
        clock = Clock()
        timers = ServerTimers(clock)
        fired: List[str] = []
        old, new = server("a"), server("a")  # same name and address, two objects
        timers.schedule(old, 5, lambda s: fired.append(f"old {s.name}"))
        timers.schedule(new, 5, lambda s: fired.append(f"new {s.name}"))
        timers.schedule(new, 7, lambda s: fired.append(f"new again {s.name}"))  # replaces
        timers.cancel(old)
        self.assertNotIn(old, timers)
        self.assertIn(new, timers)
        clock.advance(5)
        self.assertEqual(fired, [])
        clock.advance(2)
        self.assertEqual(fired, ["new again a"])
        self.assertEqual(len(timers), 0)

    def test_cancel_all(self) -> None:
        clock = Clock()
        timers = ServerTimers(clock)
        for name in "abc":
            timers.schedule(server(name), 1, lambda s: self.fail("cancelled"))
        timers.cancel_all()
        self.assertEqual(clock.getDelayedCalls(), [])
        timers.cancel(server("z"))  # nothing pending: harmless


class WaitQueueTests(unittest.TestCase):
    def test_bounded_first_come_first_served(self) -> None:
        queue = WaitQueue(limit=2)
        woken: List[int] = []
        leave_one = queue.join(lambda: woken.append(1))
        self.assertTrue(queue.has_room())
        queue.join(lambda: woken.append(2))
        self.assertFalse(queue.has_room())
        self.assertEqual(len(queue), 2)
        leave_one()
        leave_one()  # twice: harmless
        queue.join(lambda: woken.append(3))
        slots = [True, True, False]
        queue.wake(lambda: slots.pop(0))
        self.assertEqual(woken, [2, 3])
        self.assertEqual(len(queue), 0)

    def test_wake_stops_when_nothing_is_open(self) -> None:
        queue = WaitQueue()
        woken: List[int] = []
        queue.join(lambda: woken.append(1))
        queue.wake(lambda: False)
        self.assertEqual((woken, len(queue)), ([], 1))

    def test_a_waiter_back_at_the_head_keeps_its_turn_and_is_woken_once(self) -> None:
        queue = WaitQueue()
        woken: List[int] = []

        def first() -> None:
            # Woken, found no slot after all (another worker took it).
            woken.append(1)
            queue.join(first, first=True)

        queue.join(first)
        queue.join(lambda: woken.append(2))
        queue.wake(lambda: True)
        # Called at most once per waiter present: 1 went back to the head,
        # 2 was called, 1 is still first.
        self.assertEqual(woken, [1, 1])
        self.assertEqual(len(queue), 2)


class ClaimTests(unittest.TestCase):
    def test_a_server_at_its_max_connections_is_refused_and_marked_full(self) -> None:
        from lbproxy.config import parse
        from lbproxy.upstream.pool import Pool
        from tests.support import proxy_config

        config = parse(proxy_config(["http://127.0.0.1:1 name=a max_connections=1"]))
        pool_config = config.active_pool()
        a = ServerState(pool_config.servers[0])
        pool = Pool(pool_config, [a], Clock())
        self.assertTrue(pool.claim(a))
        self.assertEqual((a.active, a.full, a.usable), (1, True, False))
        # Say it was chosen before it filled (a retry's back-off): refused.
        a.full = False
        a.refresh()
        self.assertFalse(pool.claim(a))
        self.assertEqual((a.active, a.full), (1, True))
        pool.release(a)
        self.assertTrue(pool.claim(a))


class VerdictTests(unittest.TestCase):
    def judge_all(self, s: ServerState, outcomes: str) -> List[Optional[str]]:
        return [verdict.judge(s, o == "+", "seen", rise=2, fall=3) for o in outcomes]

    def test_fall_and_rise_counted_in_a_row(self) -> None:
        s = server()
        self.assertEqual(self.judge_all(s, "--+---"), [None] * 5 + [verdict.DOWN])
        self.assertFalse(s.up)
        self.assertTrue(s.usable)  # the pool refreshes it, not the verdict
        self.assertEqual(self.judge_all(s, "-+-++"), [None] * 4 + [verdict.UP])
        self.assertTrue(s.up)
        self.assertEqual(s.last_check, "seen")

    def test_a_pass_on_an_ejected_server_is_reported(self) -> None:
        s = server()
        s.ejected = True
        self.assertEqual(self.judge_all(s, "+"), [verdict.PASSED])
        s.up = False
        self.assertEqual(self.judge_all(s, "++"), [None, verdict.UP])


class EjectionTests(unittest.TestCase):
    def setUp(self) -> None:
        text = proxy_config(["http://a:1"], pool={"max_fails": "2", "fail_timeout": "10s"})
        self.clock = Clock()
        self.expired: List[ServerState] = []
        self.ejection = Ejection(parse(text).active_pool(), self.clock, self.expired.append)

    def test_ejected_then_told_when_it_is_over(self) -> None:
        s = server()
        self.assertFalse(self.ejection.failure(s))
        self.assertTrue(self.ejection.failure(s))
        self.assertTrue(s.ejected)
        self.assertFalse(self.ejection.failure(s))  # already out: not counted again
        self.clock.advance(10)
        self.assertEqual(self.expired, [s])

    def test_lift_on_probation_or_with_a_clean_slate(self) -> None:
        s = server()
        self.ejection.failure(s)
        self.ejection.failure(s)
        self.ejection.lift(s, probation=True)
        self.assertEqual((s.ejected, s.fails), (False, 1))
        self.assertTrue(self.ejection.failure(s))  # one more failure: out again
        self.ejection.lift(s, probation=False)
        self.assertEqual((s.ejected, s.fails, s.fail_window_start), (False, 0, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the reinstatement went

    def test_panic_choice_is_the_server_ejected_longest_ago_that_is_only_ejected(self) -> None:
        a, b, c, d = (server(n) for n in "abcd")
        for at, s in enumerate((a, b, c, d)):
            s.ejected, s.ejected_at = True, float(at)
        a.draining = True
        b.up = False
        self.assertIs(panic_choice([a, b, c, d]), c)
        c.full = True
        self.assertIs(panic_choice([a, b, c, d]), d)
        self.assertIsNone(panic_choice([a, b]))


class SlowStartTests(unittest.TestCase):
    def test_ramp_in_steps_and_stop(self) -> None:
        clock = Clock()
        ramp = SlowStart(clock)
        s = server(weight=2)
        ramp.start(s, 20.0)
        self.assertEqual(s.weight, 2 * WEIGHT_SCALE // 10)
        clock.advance(20.0 / SLOW_START_STEPS)
        self.assertGreater(s.weight, 2 * WEIGHT_SCALE // 10)
        ramp.stop(s)
        self.assertEqual(clock.getDelayedCalls(), [])
        ramp.start(s, 0)
        self.assertEqual(s.weight, 2 * WEIGHT_SCALE)
