"""
The request lifecycle's states and its one timer slot, against a scripted
agent and a Clock: each state's timer has one purpose and goes with it.
"""

from __future__ import annotations

from typing import List

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone

# lbproxy.config first: importing lbproxy.routing before it is an import cycle.
from lbproxy import config  # noqa: F401
from lbproxy.record import IExchange, RequestRecord
from lbproxy.upstream import attempt as attempts
from lbproxy.upstream import lifecycle
from lbproxy.upstream.lifecycle import Lifecycle
from tests.test_forwarder import ForwarderCase, ScriptedResponse


class LifecycleStateTests(ForwarderCase):
    pool_options = {"response_timeout": "10s", "retries": "2"}

    def exchange(self) -> Lifecycle:
        request = self.channel.requests[-1]
        exchange = request.exchange
        self.assertTrue(IExchange.providedBy(exchange))
        assert isinstance(exchange, Lifecycle)
        return exchange

    def timers(self, exchange: Lifecycle, *others: object) -> List[float]:
        """
        When the timers of the lifecycle and its attempt are due, from now
        (the channel's aside).
        """
        now = self.clock.seconds()
        owners = (exchange, exchange.attempt, *others)
        return [
            round(call.getTime() - now, 3)
            for call in self.clock.getDelayedCalls()
            if any(getattr(call.func, "__self__", None) is owner for owner in owners)
        ]

    def attempt_state(self, exchange: Lifecycle) -> str:
        assert exchange.attempt is not None
        return exchange.attempt.state

    def test_a_response_moves_to_relaying_then_done(self) -> None:
        d = self.request()
        request = self.channel.requests[-1]
        exchange = self.exchange()
        self.assertEqual(exchange.state, lifecycle.ATTEMPTING)
        self.assertEqual(self.attempt_state(exchange), attempts.AWAITING_RESPONSE)
        self.assertEqual(self.timers(exchange), [10.0])
        response = ScriptedResponse()
        d.callback(response)
        self.assertEqual(self.attempt_state(exchange), attempts.RELAYING)
        self.assertEqual(self.timers(exchange), [60.0])
        attempt = exchange.attempt
        assert attempt is not None
        response.transport.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual((exchange.state, attempt.state), (lifecycle.DONE, attempts.ENDED))
        self.assertIsNone(request.exchange)
        self.assertEqual(self.timers(exchange, attempt), [])

    def test_the_response_timer_of_a_failed_attempt_goes_with_it(self) -> None:
        first = self.request()
        exchange = self.exchange()
        self.clock.advance(9)
        first.errback(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.agent.sent), 2)
        # The first attempt's response timer would have fired at 10 s: the
        # second attempt has its own 10 s from now.
        self.clock.advance(5)
        self.assertEqual(self.agent.cancelled, 0)
        self.assertEqual(self.attempt_state(exchange), attempts.AWAITING_RESPONSE)
        self.assertEqual(self.timers(exchange), [5.0])
        self.clock.advance(5)
        self.assertEqual(self.agent.cancelled, 1)

    def test_backing_off_has_only_the_backoff_timer(self) -> None:
        self.request().errback(Failure(error.ConnectionRefusedError()))
        self.agent.sent[-1][-1].errback(Failure(error.ConnectionRefusedError()))
        exchange = self.exchange()
        self.assertEqual(exchange.state, lifecycle.BACKING_OFF)
        self.assertEqual(self.timers(exchange), [0.05])
        self.clock.advance(0.05)
        self.assertEqual(exchange.state, lifecycle.ATTEMPTING)
        self.assertEqual(self.attempt_state(exchange), attempts.AWAITING_RESPONSE)
        self.assertEqual(len(self.agent.sent), 3)

    def test_client_lost_while_backing_off_sends_nothing_more(self) -> None:
        self.request().errback(Failure(error.ConnectionRefusedError()))
        self.agent.sent[-1][-1].errback(Failure(error.ConnectionRefusedError()))
        exchange = self.exchange()
        self.assertEqual(exchange.attempt, None)
        self.channel.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(exchange.state, lifecycle.DONE)
        self.assertEqual(self.timers(exchange), [])
        self.clock.advance(1)
        self.assertEqual(len(self.agent.sent), 2)
        self.assertEqual(self.active(), [0, 0])

    def test_the_record_is_filled_and_reported_once(self) -> None:
        reported: List[RequestRecord] = []
        self.channel.site.request_done = reported.append
        d = self.request()
        d.errback(Failure(error.ConnectionRefusedError()))
        response = ScriptedResponse(length=2)
        self.agent.sent[-1][-1].callback(response)
        response.transport.protocol.dataReceived(b"ok")
        response.transport.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(len(reported), 1)
        record = reported[0]
        self.assertEqual(
            (record.method, record.target, record.status, record.attempts),
            (b"GET", b"/x", 200, 2),
        )
        self.assertIs(record.pool, self.pool)
        self.assertIs(record.server, self.pool.servers[1])
        self.assertRegex(record.request_id, rb"^[0-9a-f]{32}$")
        self.assertGreater(record.sent, 0)
