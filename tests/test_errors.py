"""
The proxy's own error answers (lbproxy.front.errors): one format, written
as bytes on a bare transport or onto a twisted.web request.
"""

from __future__ import annotations

import json
from typing import List, Tuple

from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import http

from lbproxy.front.errors import ErrorPage, api_error, error_response


def request_on_channel() -> Tuple[http.Request, http.HTTPChannel]:
    """A request as twisted.web's channel makes it, on a StringTransport."""
    made: List[http.Request] = []

    class Captured(http.Request):
        def process(self) -> None:
            made.append(self)

    channel = http.HTTPChannel()
    channel.requestFactory = Captured  # type: ignore[assignment]
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return made[0], channel


class ErrorPageTests(unittest.TestCase):
    def test_refusal_bytes(self) -> None:
        self.assertEqual(
            error_response(431, b"Request Header Fields Too Large", b"too many header fields"),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 60\r\nConnection: close\r\n\r\n"
            b"431 Request Header Fields Too Large: too many header fields\n",
        )

    def test_retry_after_in_raw_bytes(self) -> None:
        raw = ErrorPage(503, b"Service Unavailable", b"no server", retry_after=4).raw()
        self.assertIn(b"\r\nRetry-After: 4\r\n", raw)
        self.assertNotIn(b"Connection", raw)

    def test_written_onto_a_request(self) -> None:
        request, channel = request_on_channel()
        request.responseHeaders.setRawHeaders(b"X-Backend", [b"leaked"])
        request.responseHeaders.setRawHeaders(b"Connection", [b"keep-alive"])
        ErrorPage(503, b"Service Unavailable", b"no server", close=True, retry_after=7).write_to(
            request
        )
        self.assertTrue(request.finished)
        self.assertFalse(channel.persistent)
        written = channel.transport.value()  # type: ignore[union-attr]
        head, _, body = written.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertNotIn(b"X-Backend", head)
        self.assertIn(b"Connection: close", head)
        self.assertIn(b"Retry-After: 7", head)
        self.assertIn(b"Content-Type: text/plain; charset=utf-8", head)
        self.assertIn(b"Date: ", head)
        self.assertEqual(body, b"503 Service Unavailable: no server\n")

    def test_api_error_is_json(self) -> None:
        request, _ = request_on_channel()
        body = api_error(request, 404, "no pool 'x'")
        self.assertEqual(request.code, 404)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(json.loads(body), {"error": "no pool 'x'"})
        self.assertTrue(body.endswith(b"}\n"))
