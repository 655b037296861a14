"""
A request without a body on a backend connection (lbproxy._twisted
send_without_body, finish_response, LazyPauseProxy): held to what the same
connection does when Twisted's own HTTP11ClientProtocol.request sends it,
with the same response bytes, on a StringTransport.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from lbproxy._twisted import (
    ClientRequest,
    HTTP11ClientProtocol,
    WrapperException,
    request_head,
)
from lbproxy.upstream import backend
from lbproxy.upstream.backend import _BackendProtocol


class _CountingTransport(StringTransport):
    """A StringTransport that counts the pauses it is asked for."""

    pauses = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        StringTransport.pauseProducing(self)


class _Body(Protocol):
    def __init__(self) -> None:
        self.data: List[bytes] = []
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


def _request(
    method: bytes = b"GET",
    headers: Tuple[Tuple[bytes, List[bytes]], ...] = ((b"Host", [b"example.com"]),),
    persistent: bool = True,
) -> ClientRequest:
    h = Headers()
    for name, values in headers:
        h.setRawHeaders(name, values)
    return ClientRequest(method, b"/a?b", h, None, persistent)


def _run(
    protocol: HTTP11ClientProtocol,
    request: ClientRequest,
    reads: List[bytes],
    take_body: bool = True,
) -> Dict[str, Any]:
    """
    Send C{request} on C{protocol} over a fresh transport, feed it C{reads};
    what can be seen of it.
    """
    transport = _CountingTransport()
    protocol.makeConnection(transport)
    seen: Dict[str, Any] = {"quiescent": 0}
    body = _Body()

    def got(response: Any) -> None:
        seen["code"] = response.code
        seen["headers"] = sorted(response.headers.getAllRawHeaders())
        seen["length"] = response.length
        seen["response"] = response
        if take_body:
            response.deliverBody(body)

    def failed(failure: Failure) -> None:
        seen["failure"] = failure.type
        if isinstance(failure.value, WrapperException):
            seen["reasons"] = [r.type for r in failure.value.reasons]

    d = protocol.request(request)
    d.addCallbacks(got, failed)
    seen["written"] = transport.value()
    for data in reads:
        protocol.dataReceived(data)
    seen["producer after the reads"] = transport.producerState
    seen["pauses"] = transport.pauses
    response = seen.pop("response", None)
    if not take_body and response is not None:
        # Taken late: the connection is resumed and the body follows.
        response.deliverBody(body)
    seen["body"] = b"".join(body.data)
    seen["ended"] = None if body.reason is None else body.reason.type
    seen["state"] = protocol.state
    seen["disconnecting"] = transport.disconnecting
    seen["producer"] = transport.producerState
    return seen


def _twisteds(request: ClientRequest, reads: List[bytes], **kw: Any) -> Dict[str, Any]:
    """The backend connection with every request sent by Twisted's request()."""
    quiescent: List[object] = []
    original = backend.request_head
    backend.request_head = lambda request: None  # type: ignore[assignment]
    try:
        seen = _run(_BackendProtocol(quiescent.append), request, reads, **kw)
    finally:
        backend.request_head = original
    seen["quiescent"] = len(quiescent)
    return seen


def _ours(request: ClientRequest, reads: List[bytes], **kw: Any) -> Dict[str, Any]:
    quiescent: List[object] = []
    seen = _run(_BackendProtocol(quiescent.append), request, reads, **kw)
    seen["quiescent"] = len(quiescent)
    return seen


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"

RESPONSES: Dict[str, List[bytes]] = {
    "length, one read": [OK + b"0123456789"],
    "length, head alone": [OK, b"01234", b"56789"],
    "length, split head": [OK[:20], OK[20:] + b"0123456789"],
    "chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
    "close": [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"],
    "until close": [b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nsome"],
    "no content": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    "empty": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    "1xx first": [b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"0123456789"],
    "bad status": [b"HTTP/1.1 abc OK\r\n\r\n"],
    "nothing yet": [],
    "framed two ways": [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ],
    "hop-by-hop headers": [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: t=5\r\n"
        b"Upgrade: h2\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok"
    ],
}


class SameAsTwistedTests(unittest.SynchronousTestCase):
    """The same request and response bytes: the same outcome as Twisted's."""

    def test_responses(self) -> None:
        for name, reads in RESPONSES.items():
            for take_body in (True, False):
                with self.subTest(response=name, take_body=take_body):
                    theirs = _twisteds(_request(), reads, take_body=take_body)
                    ours = _ours(_request(), reads, take_body=take_body)
                    if take_body:
                        # The one difference: Twisted pauses the connection
                        # and resumes it as the body is taken.
                        self.assertEqual(ours.pop("pauses"), 0)
                        theirs.pop("pauses")
                    elif name == "framed two ways":
                        # Refused, its connection closed while the head is
                        # handled: the pause held meanwhile never reaches it.
                        self.assertEqual(ours.pop("pauses"), 0)
                        theirs.pop("pauses")
                    self.assertEqual(ours, theirs, name)

    def test_requests(self) -> None:
        requests = {
            "GET": _request(),
            "HEAD": _request(b"HEAD"),
            "POST without a body": _request(b"POST"),
            "PUT without a body": _request(b"PUT"),
            "not persistent": _request(persistent=False),
            "values": _request(
                headers=(
                    (b"Host", [b"example.com"]),
                    (b"x-a", [b"1", b"2"]),
                    (b"Via", [b"1.1 p"]),
                    (b"cookie", [b"a=b"]),
                )
            ),
            "no Host": _request(headers=((b"Accept", [b"*/*"]),)),
            "two Hosts": _request(headers=((b"Host", [b"a", b"b"]),)),
        }
        for name, request in requests.items():
            with self.subTest(request=name):
                # (A request Twisted refuses aborts the connection: no response.)
                reads = [] if "Host" in name else [OK + b"0123456789"]
                ours, theirs = _ours(request, reads), _twisteds(request, reads)
                ours.pop("pauses")
                theirs.pop("pauses")
                self.assertEqual(ours, theirs, name)

    def test_head_is_what_twisted_writes(self) -> None:
        request = _request(
            b"POST", headers=((b"Host", [b"h"]), (b"X-Forwarded-For", [b"1.2.3.4", b"5.6.7.8"]))
        )
        transport = StringTransport()
        request.writeTo(transport)
        self.assertEqual(request_head(request), transport.value())
        self.assertIsNone(request_head(_request(headers=((b"Accept", [b"*/*"]),))))

    def test_cancelled_while_waiting(self) -> None:
        outcomes = []
        for protocol in (HTTP11ClientProtocol(), _BackendProtocol(lambda p: None)):
            # (Twisted's own protocol: a cancel does the same on both.)
            transport = StringTransport()
            protocol.makeConnection(transport)
            failures: List[Failure] = []
            d = protocol.request(_request())
            d.addErrback(failures.append)
            d.cancel()
            (failure,) = failures
            outcomes.append(
                (
                    failure.type,
                    [r.type for r in failure.value.reasons],
                    transport.disconnecting or getattr(transport, "disconnected", False),
                    protocol.state,
                )
            )
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertIn(CancelledError, outcomes[1][1])


class PauseTests(unittest.SynchronousTestCase):
    """The pause at the end of a response head, held while the head is handled."""

    def test_a_body_taken_at_once_never_pauses_the_connection(self) -> None:
        transport = _CountingTransport()
        protocol = _BackendProtocol(lambda p: None)
        protocol.makeConnection(transport)
        body = _Body()
        protocol.request(_request()).addCallback(lambda r: r.deliverBody(body))
        protocol.dataReceived(OK + b"01234")
        protocol.dataReceived(b"56789")
        self.assertEqual(transport.pauses, 0)
        self.assertEqual(b"".join(body.data), b"0123456789")
        self.assertEqual(transport.producerState, "producing")

    def test_a_body_not_taken_pauses_the_connection_until_it_is(self) -> None:
        transport = _CountingTransport()
        protocol = _BackendProtocol(lambda p: None)
        protocol.makeConnection(transport)
        responses: List[Any] = []
        protocol.request(_request()).addCallback(responses.append)
        protocol.dataReceived(OK + b"01234")
        self.assertEqual(transport.pauses, 1)
        self.assertEqual(transport.producerState, "paused")
        body = _Body()
        responses[0].deliverBody(body)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"56789")
        self.assertEqual(b"".join(body.data), b"0123456789")

    def test_a_pause_after_the_body_is_taken_reaches_the_connection(self) -> None:
        # A slow client pauses the backend while the head is handled.
        transport = _CountingTransport()
        protocol = _BackendProtocol(lambda p: None)
        protocol.makeConnection(transport)

        def got(response: Any) -> None:
            body = _Body()
            response.deliverBody(body)
            assert body.transport is not None
            body.transport.pauseProducing()  # type: ignore[attr-defined]

        protocol.request(_request()).addCallback(got)
        protocol.dataReceived(OK + b"01234")
        self.assertEqual(transport.pauses, 1)
        self.assertEqual(transport.producerState, "paused")
