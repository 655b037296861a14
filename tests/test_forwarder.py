"""
The forwarder against a scripted agent: every outcome releases the server's
in-flight count exactly once, and a client that leaves cancels the backend.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy.config import parse
from lbproxy.front.resource import ProxyResource
from lbproxy.front.site import ProxySite
from lbproxy.upstream.forwarder import Forwarder, RequestIds
from lbproxy.upstream.pool import Pool, ServerState
from tests.support import proxy_config


class ScriptedAgent:
    """Records each send; the test fires or fails the returned Deferred."""

    def __init__(self) -> None:
        self.sent: List[tuple] = []
        self.cancelled = 0

    def send(self, route, method, target, headers, body):  # type: ignore[no-untyped-def]
        def cancel(d: Deferred) -> None:
            self.cancelled += 1
            d.errback(Failure(CancelledError()))

        d: Deferred = Deferred(cancel)
        self.sent.append((route, method, target, headers, body, d))
        return d


class BodyTransport:
    """The backend side of a response body, as the relay sees it."""

    def __init__(self) -> None:
        self.stopped = 0
        self.paused = 0
        self.protocol = None

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped += 1
        self.protocol.connectionLost(Failure(ResponseFailed([Failure(error.ConnectionLost())])))


class ScriptedResponse:
    def __init__(self, code: int = 200, length: object = UNKNOWN_LENGTH) -> None:
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers({b"X-From": [b"backend"]})
        self.length = length
        self.transport = BodyTransport()

    def deliverBody(self, protocol) -> None:  # type: ignore[no-untyped-def]
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)


class CountingPool(Pool):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.log: List[str] = []

    def dispatch(self, server: ServerState) -> None:
        self.log.append(f"+{server.name}")
        super().dispatch(server)

    def release(self, server: ServerState) -> None:
        self.log.append(f"-{server.name}")
        super().release(server)


class ForwarderCase(unittest.TestCase):
    servers = ["http://127.0.0.1:1 name=a", "http://127.0.0.1:2 name=b"]
    pool_options: Dict[str, str] = {}

    def setUp(self) -> None:
        config = parse(proxy_config(self.servers, pool=self.pool_options))
        pool_config = config.active_pool()
        self.pool = CountingPool(pool_config, [ServerState(s, s.name) for s in pool_config.servers])
        self.agent = ScriptedAgent()
        self.clock = Clock()
        forwarder = Forwarder(self.pool, self.agent, b"lbproxy", self.clock)  # type: ignore[arg-type]
        site = ProxySite(ProxyResource(forwarder), reactor=self.clock)
        self.channel = site.buildProtocol(None)
        self.client = StringTransport()
        self.channel.makeConnection(self.client)

    def request(self, data: bytes = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n") -> Deferred:
        self.channel.dataReceived(data)
        self.clock.advance(0)  # requests with a body are dispatched in the next turn
        return self.agent.sent[-1][-1]

    def active(self) -> List[int]:
        return [s.active for s in self.pool.servers]


class ForwarderTests(ForwarderCase):
    def test_success_releases_once(self) -> None:
        d = self.request()
        self.assertEqual(self.active(), [1, 0])
        response = ScriptedResponse(length=5)
        d.callback(response)
        response.transport.protocol.dataReceived(b"hello")
        self.assertEqual(self.active(), [1, 0])
        response.transport.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.pool.log, ["+a", "-a"])
        self.assertTrue(self.client.value().endswith(b"\r\n\r\nhello"))
        self.assertIn(b"Content-Length: 5\r\n", self.client.value())

    def test_not_sent_fails_over_and_releases_each(self) -> None:
        first = self.request()
        first.errback(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.agent.sent), 2)
        self.assertEqual(self.active(), [0, 1])
        second = self.agent.sent[-1][-1]
        second.errback(Failure(error.ConnectError()))
        # Every server tried, one retry left: a second round after a pause.
        self.assertEqual(len(self.agent.sent), 2)
        self.clock.advance(0.05)
        self.assertEqual(len(self.agent.sent), 3)
        self.agent.sent[-1][-1].errback(Failure(error.TimeoutError()))
        # The second round starts where the balancer stands (after a).
        self.assertEqual(self.pool.log, ["+a", "-a", "+b", "-b", "+b", "-b"])
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))

    def test_failure_after_sending_is_not_retried(self) -> None:
        d = self.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nz")
        self.agent.sent[-1][4].startProducing(StringTransport())
        d.errback(Failure(ResponseNeverReceived([Failure(error.ConnectionLost())])))
        self.assertEqual(len(self.agent.sent), 1)
        self.assertEqual(self.pool.log, ["+a", "-a"])
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))

    def test_streamed_body_already_taken_is_not_sent_elsewhere(self) -> None:
        d = self.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        body = self.agent.sent[-1][4]
        body.startProducing(StringTransport())
        # Even a failure that says nothing was sent cannot be retried
        # elsewhere once part of a streamed body has gone.
        d.errback(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.agent.sent), 1)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertIn(b"Connection: close\r\n", self.client.value())

    def test_untouched_streamed_body_fails_over(self) -> None:
        first = self.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        first.errback(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.agent.sent), 2)
        self.assertIs(self.agent.sent[0][4], self.agent.sent[1][4])

    def test_client_gone_while_waiting_cancels_and_releases(self) -> None:
        self.request()
        self.channel.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.agent.cancelled, 1)
        self.assertEqual(self.pool.log, ["+a", "-a"])
        self.assertEqual(len(self.agent.sent), 1)

    def test_client_gone_mid_body_stops_backend_and_releases(self) -> None:
        d = self.request()
        response = ScriptedResponse()
        d.callback(response)
        response.transport.protocol.dataReceived(b"part")
        self.channel.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(response.transport.stopped, 1)
        self.assertEqual(self.pool.log, ["+a", "-a"])
        self.assertEqual(self.active(), [0, 0])

    def test_body_cut_short_closes_client_and_releases(self) -> None:
        d = self.request()
        response = ScriptedResponse(length=10)
        d.callback(response)
        response.transport.protocol.dataReceived(b"part")
        response.transport.protocol.connectionLost(
            Failure(ResponseFailed([Failure(error.ConnectionLost())]))
        )
        self.assertEqual(self.pool.log, ["+a", "-a"])
        self.assertTrue(self.client.disconnecting)
        self.assertFalse(self.client.value().endswith(b"0\r\n\r\n"))

    def test_backend_registered_as_producer(self) -> None:
        d = self.request()
        response = ScriptedResponse()
        d.callback(response)
        self.assertIs(self.channel.requests[0].producer, response.transport)
        self.channel.pauseProducing()
        self.assertEqual(response.transport.paused, 1)

    def test_forwarded_request(self) -> None:
        self.request(b"GET /a;b?c HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
        route, method, target, headers, body, _ = self.agent.sent[0]
        self.assertEqual((route, method, target, body), ("a", b"GET", b"/a;b?c", None))
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-for"), [b"1.2.3.4, 192.168.1.1"])


class TimeoutTests(ForwarderCase):
    servers = [
        "http://127.0.0.1:1 name=a",
        "http://127.0.0.1:2 name=b",
        "http://127.0.0.1:3 name=c",
    ]
    pool_options = {"response_timeout": "30s", "idle_timeout": "60s", "retries": "2"}

    def status(self) -> bytes:
        return self.client.value().split(b"\r\n", 1)[0]

    def test_post_without_response_is_504_and_not_resent(self) -> None:
        self.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.clock.advance(29.9)
        self.assertEqual(self.client.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.agent.cancelled, 1)
        self.assertEqual(len(self.agent.sent), 1)
        self.assertEqual(self.status(), b"HTTP/1.1 504 Gateway Timeout")
        self.assertEqual(self.active(), [0, 0, 0])

    def test_get_without_response_is_tried_on_each_server_then_504(self) -> None:
        self.request()
        for _ in range(3):
            self.clock.advance(30)
        self.assertEqual([sent[0] for sent in self.agent.sent], ["a", "b", "c"])
        self.assertEqual(self.agent.cancelled, 3)
        self.assertEqual(self.status(), b"HTTP/1.1 504 Gateway Timeout")
        self.assertEqual(self.pool.log, ["+a", "-a", "+b", "-b", "+c", "-c"])

    def test_idempotent_request_retried_after_a_reset(self) -> None:
        d = self.request(b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n")
        d.errback(Failure(ResponseNeverReceived([Failure(error.ConnectionLost())])))
        self.assertEqual([sent[0] for sent in self.agent.sent], ["a", "b"])
        response = ScriptedResponse(length=0)
        self.agent.sent[-1][-1].callback(response)
        response.transport.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.status(), b"HTTP/1.1 200 OK")

    def test_response_clock_starts_when_the_body_has_gone(self) -> None:
        self.request(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        body = self.agent.sent[-1][4]
        body.startProducing(StringTransport())
        self.clock.advance(29)  # a slow upload: not a missing response
        self.channel.dataReceived(b"cd")
        self.clock.advance(29.9)
        self.assertEqual(self.client.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.status(), b"HTTP/1.1 504 Gateway Timeout")
        # The body was taken by the first server: no retry, even for PUT.
        self.assertEqual(len(self.agent.sent), 1)

    def test_stalled_upload_is_408_and_closed(self) -> None:
        # Gaps in an upload are limited by client_body_timeout (30s by
        # default), being shorter than idle_timeout (60s).
        self.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
        self.agent.sent[-1][4].startProducing(StringTransport())
        self.clock.advance(29)
        self.channel.dataReceived(b"c")
        self.clock.advance(29)
        self.assertEqual(self.client.value(), b"")
        self.clock.advance(1)
        self.assertEqual(self.status(), b"HTTP/1.1 408 Request Timeout")
        self.assertIn(b"Connection: close\r\n", self.client.value())
        self.assertEqual(self.active(), [0, 0, 0])

    def test_stalled_response_body_is_cut_short(self) -> None:
        d = self.request()
        response = ScriptedResponse(length=10)
        d.callback(response)
        response.transport.protocol.dataReceived(b"12345")
        self.clock.advance(59)
        response.transport.protocol.dataReceived(b"6")
        self.clock.advance(59)
        self.assertEqual(response.transport.stopped, 0)
        self.clock.advance(1)
        self.assertEqual(response.transport.stopped, 1)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.active(), [0, 0, 0])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class NoRetryTests(ForwarderCase):
    pool_options = {"retries": "0"}

    def test_retries_zero_means_one_attempt(self) -> None:
        self.request().errback(Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(self.agent.sent), 1)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))


class RequestIdsTests(unittest.SynchronousTestCase):
    """The request IDs the proxy makes, read from os.urandom in batches."""

    def test_ids_are_new_32_hex_digits_across_batches(self) -> None:
        ids = RequestIds()
        taken = [ids.take() for _ in range(3 * RequestIds.BATCH + 5)]
        self.assertEqual(len(set(taken)), len(taken))
        for request_id in taken:
            self.assertEqual(len(request_id), 32)
            self.assertTrue(set(request_id) <= set(b"0123456789abcdef"), request_id)

    def test_each_forwarder_draws_its_own(self) -> None:
        self.assertNotEqual(RequestIds().take(), RequestIds().take())
