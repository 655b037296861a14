"""
lbproxy.upstream.rotation: passive and active checks' verdicts acted on,
each change logged and reported once, and the one way back into rotation
(slow start, waiting requests woken), with task.Clock.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from lbproxy.config import PoolConfig, parse
from lbproxy.upstream.rotation import Rotation
from lbproxy.upstream.server import WEIGHT_SCALE, ServerState


def pool(extra: str = "") -> PoolConfig:
    text = f"[proxy]\nlisten = tcp:1\npool = web\n[pool:web]\n{extra}servers = http://a:1 name=a weight=2\n"
    return parse(text, "t.ini").pools["web"]


class RotationTests(unittest.SynchronousTestCase):
    def rotation(self, extra: str = "") -> Rotation:
        self.clock = Clock()
        self.changes: List[Tuple[str, str, str]] = []
        self.woken = 0

        def changed(server: ServerState, what: str, detail: str) -> None:
            self.changes.append((server.name, what, detail))

        def wake() -> None:
            self.woken += 1

        config = pool(extra)
        self.server = ServerState(config.servers[0])
        rotation = Rotation(config, self.clock, changed, wake)
        self.addCleanup(rotation.stop)
        return rotation

    def test_failed_requests_eject_then_probation(self) -> None:
        rotation = self.rotation("max_fails = 2\nfail_timeout = 10s\n")
        server = self.server
        rotation.failure(server)
        self.assertEqual((self.changes, server.usable), ([], True))
        with capturedLogs() as events:
            rotation.failure(server)
        self.assertEqual(self.changes, [("a", "ejected", "2 failed requests")])
        self.assertEqual((server.usable, server.state), (False, "DOWN"))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["server a taken out for 10s after 2 failed requests"],
        )
        self.clock.advance(10)
        self.assertEqual(self.changes[-1], ("a", "reinstated", "on probation"))
        self.assertEqual((server.usable, self.woken), (True, 1))
        rotation.failure(server)  # one more failure on probation: out again
        self.assertFalse(server.usable)

    def test_a_success_forgives_the_failures_counted(self) -> None:
        rotation = self.rotation("max_fails = 2\n")
        rotation.failure(self.server)
        rotation.success(self.server)
        rotation.failure(self.server)
        self.assertEqual((self.changes, self.server.usable), ([], True))

    def test_health_checks_down_then_up_after_rise(self) -> None:
        rotation = self.rotation("health_rise = 2\nhealth_fall = 2\n")
        server = self.server
        rotation.check(server, False, "HTTP 500")
        self.assertEqual(self.changes, [])
        rotation.check(server, False, "HTTP 503")
        self.assertEqual(self.changes, [("a", "DOWN", "HTTP 503")])
        self.assertFalse(server.usable)
        rotation.check(server, True, "HTTP 200")
        self.assertEqual((len(self.changes), self.woken), (1, 0))
        rotation.check(server, True, "HTTP 204")
        self.assertEqual(self.changes[-1], ("a", "UP", "HTTP 204"))
        self.assertEqual((server.usable, self.woken), (True, 1))

    def test_a_passing_check_reinstates_an_ejected_server_with_a_clean_slate(self) -> None:
        rotation = self.rotation("max_fails = 1\nfail_timeout = 30s\n")
        server = self.server
        rotation.failure(server)
        rotation.check(server, True, "HTTP 200")
        self.assertEqual(self.changes[-1], ("a", "reinstated", "health check passed"))
        self.assertEqual((server.usable, server.fails, self.woken), (True, 0, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the reinstatement timer went

    def test_back_into_rotation_with_slow_start(self) -> None:
        rotation = self.rotation("max_fails = 1\nfail_timeout = 5s\nslow_start = 20s\n")
        server = self.server
        rotation.failure(server)
        self.clock.advance(5)
        self.assertEqual(server.weight, int(2 * WEIGHT_SCALE * 0.1))
        self.clock.advance(10)
        self.assertEqual(server.weight, int(2 * WEIGHT_SCALE * 0.55))
        self.clock.advance(10)
        self.assertEqual(server.weight, 2 * WEIGHT_SCALE)

    def test_forget_and_stop_cancel_the_timers(self) -> None:
        rotation = self.rotation("max_fails = 1\nfail_timeout = 5s\nslow_start = 20s\n")
        rotation.failure(self.server)
        rotation.forget(self.server)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.changes, [("a", "ejected", "1 failed requests")])
        rotation.start_slow_start(self.server)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        rotation.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reconfigure_takes_the_new_limits(self) -> None:
        rotation = self.rotation("max_fails = 3\n")
        rotation.reconfigure(pool("max_fails = 1\n"))
        rotation.failure(self.server)
        self.assertFalse(self.server.usable)
