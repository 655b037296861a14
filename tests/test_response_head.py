"""
The one-pass reading of a backend's response head
(L{lbproxy._twisted.read_response_head}) against Twisted's own parser,
line by line: for every head, both end in the same response, headers,
framing decision and bytes left over, or both fail.
"""

from __future__ import annotations

import random
from typing import List, Tuple

from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web._newclient import Request as ClientRequest
from twisted.web.http_headers import Headers

from lbproxy import _twisted
from lbproxy._twisted import HTTPClientParser, read_response_head


def _outcome(data: bytes, one_pass: bool, method: bytes = b"GET") -> Tuple[object, ...]:
    finished: List[bytes] = []
    body: List[bytes] = []
    parser = HTTPClientParser(ClientRequest(method, b"/", Headers(), None), finished.append)
    parser.makeConnection(StringTransport())
    responses: List[object] = []
    parser._responseDeferred.addCallback(responses.append)  # type: ignore[attr-defined]
    try:
        if not (one_pass and read_response_head(parser, data)):
            parser.dataReceived(data)
    except Exception as e:
        return ("raised", type(e).__name__)
    if not responses:
        return ("waiting", parser.state)
    response = responses[0]
    if parser.bodyDecoder is not None and parser.state != "DONE":
        parser.response._bodyDataReceived = body.append  # type: ignore[attr-defined]
    return (
        response.version,  # type: ignore[attr-defined]
        response.code,  # type: ignore[attr-defined]
        response.phrase,  # type: ignore[attr-defined]
        response.length,  # type: ignore[attr-defined]
        list(response.headers.getAllRawHeaders()),  # type: ignore[attr-defined]
        list(parser.connHeaders.getAllRawHeaders()),
        parser.state,
        type(parser.bodyDecoder).__name__,
        finished,
        parser._buffer,  # type: ignore[attr-defined]
    )


HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: x\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nstray",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nabcde",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nz",
    b"HTTP/1.1 200 OK\nContent-Length: 1\n\nz",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\n\r\n\r\nz",
    b"HTTP/1.1 200 OK\r\nBad header\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nbody until close",
    b"HTTP/1.1 200 OK\r\r\nA:\r\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nKeep-Alive: x\r\nContent-Length: 2\r\n\r\nok",
    b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX:\ty \t\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nCONTENT-length: 2\r\nx-A: 1\r\nX-a: 2\r\nETAG: e\r\nTE: t\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nUpgrade: z\r\nConnection: keep-alive, x\r\nX: 1\r\nContent-Length: 0\r\n\r\n",
]


class ResponseHeadTests(unittest.TestCase):
    def assert_same(self, data: bytes, method: bytes = b"GET") -> None:
        self.assertEqual(
            _outcome(data, True, method), _outcome(data, False, method), f"for {data[:80]!r}"
        )

    def test_listed_heads_read_as_twisted_reads_them(self) -> None:
        # Each head twice: its names new to the one-pass reading, then known.
        for data in HEADS:
            _twisted._response_names.clear()
            for _ in range(2):
                self.assert_same(data)
                self.assert_same(data, b"HEAD")

    def test_known_names_only_those_twisted_took(self) -> None:
        """
        A name is remembered with Twisted's spelling once Twisted's parser
        took it; one it refused is not, and refused again the next time.
        """
        _twisted._response_names.clear()
        head = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 0\r\nx-a: 1\r\nX-A: 2\r\n\r\n"
        self.assert_same(head)
        self.assertEqual(
            _twisted._response_names,
            {
                b"content-LENGTH": (b"Content-Length", True),
                b"x-a": (b"X-A", False),
                b"X-A": (b"X-A", False),
            },
        )
        bad = b"HTTP/1.1 200 OK\r\nBad name: 1\r\nContent-Length: 0\r\n\r\n"
        for _ in range(2):
            self.assertEqual(_outcome(bad, True)[0], "raised")
        self.assertNotIn(b"Bad name", _twisted._response_names)

    def test_known_names_bounded(self) -> None:
        _twisted._response_names.clear()
        limit = _twisted._RESPONSE_NAMES_CACHED
        head = b"".join(b"X-%d: v\r\n" % n for n in range(limit + 10))
        data = b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n"
        self.assert_same(data)
        self.assertEqual(len(_twisted._response_names), limit)
        self.assert_same(data)

    def test_plain_head_is_read_in_one_pass(self) -> None:
        parser = HTTPClientParser(ClientRequest(b"GET", b"/", Headers(), None), lambda rest: None)
        parser.makeConnection(StringTransport())
        self.assertTrue(read_response_head(parser, HEADS[0]))
        self.assertEqual(parser.response.code, 200)  # type: ignore[attr-defined]

    def test_mutated_heads_read_as_twisted_reads_them(self) -> None:
        rng = random.Random(12)
        _twisted._response_names.clear()
        pieces = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"0", b"\x00", b"chunked", b","]
        for _ in range(3000):
            data = bytearray(rng.choice(HEADS))
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data) + 1)
                if rng.random() < 0.5:
                    data[at:at] = rng.choice(pieces)
                else:
                    del data[at : at + rng.randint(1, 3)]
            self.assert_same(bytes(data), rng.choice([b"GET", b"HEAD"]))
